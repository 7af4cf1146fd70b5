"""Pieces of the NVML reader that FakeNVML cannot reach: the raw C call for fans beyond fan 0."""
import types

import pynvml
import pytest

from exporter.gpu_reader import _c_fan_speed_rpm, text


def fake_c_library(speeds: dict[int, int]):
    """A module shaped like pynvml whose C entry point fills nvmlFanSpeedInfo_t like the driver."""
    mod = types.ModuleType("pynvml_like")
    mod.c_nvmlFanSpeedInfo_t = pynvml.c_nvmlFanSpeedInfo_t
    mod.nvmlFanSpeedInfo_v1 = pynvml.nvmlFanSpeedInfo_v1
    mod._nvmlCheckReturn = pynvml._nvmlCheckReturn

    def function_pointer(name):
        assert name == "nvmlDeviceGetFanSpeedRPM"

        def c_call(handle, info_ref):
            info = info_ref._obj
            assert info.version == pynvml.nvmlFanSpeedInfo_v1
            if info.fan not in speeds:
                return pynvml.NVML_ERROR_INVALID_ARGUMENT
            info.speed = speeds[info.fan]
            return pynvml.NVML_SUCCESS

        return c_call

    mod._nvmlGetFunctionPointer = function_pointer
    return mod


def test_c_fan_speed_rpm_asks_the_given_fan():
    lib = fake_c_library({0: 900, 1: 1450})
    assert _c_fan_speed_rpm(lib, object(), 1) == 1450
    with pytest.raises(pynvml.NVMLError) as e:
        _c_fan_speed_rpm(lib, object(), 2)
    assert e.value.value == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_c_fan_speed_rpm_on_bindings_without_the_struct():
    with pytest.raises(pynvml.NVMLError) as e:
        _c_fan_speed_rpm(types.ModuleType("old_pynvml"), object(), 1)
    assert e.value.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND


@pytest.mark.parametrize("raw, expected", [(b"NVIDIA H100\x00", "NVIDIA H100"), ("RTX", "RTX"), (3, "3")])
def test_text(raw, expected):
    assert text(raw) == expected
