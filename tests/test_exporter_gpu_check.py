"""scripts/gpu_check.py, exercised against FakeNVML (there is no GPU here)."""
import pynvml
import pytest

from exporter.sim.fake_nvml import FakeNVML
from scripts import gpu_check


def test_fake_check_passes_and_explains_absences(capsys):
    assert gpu_check.main(["--fake", "--docker-url", "none", "--scrapes", "3"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines() if line.startswith(("gpu_", "docker_"))}
    assert "NOT_SUPPORTED (ecc_errors_corrected)" in rows[("gpu_ecc_errors_total", "0", "absent")]
    assert "no fans" in rows[("gpu_fan_speed_ratio", "1", "absent")]
    assert ("gpu_ecc_errors_total", "1", "ok") in rows
    assert ("gpu_temperature_celsius", "0", "ok") in rows
    assert "--docker-url none" in rows[("docker_container_running", "-", "absent")]
    assert "result: all contract metrics present or deliberately absent" in out
    assert "/metrics over HTTP: 3 scrapes" in out


def test_unexplained_absence_fails_the_check(monkeypatch, capsys):
    def flaky() -> FakeNVML:
        nvml = gpu_check_fake()

        def temperature(handle, sensor):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

        nvml.nvmlDeviceGetTemperature = temperature
        return nvml

    gpu_check_fake = gpu_check.fake_nvml
    monkeypatch.setattr(gpu_check, "fake_nvml", flaky)
    assert gpu_check.main(["--fake", "--docker-url", "none", "--scrapes", "1"]) == 1
    out = capsys.readouterr().out
    assert "gpu_temperature_celsius" in next(line for line in out.splitlines() if "MISSING" in line)


def test_without_nvml_exits_2_with_a_clear_message(capsys):
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver")
    assert gpu_check.main(["--docker-url", "none"]) == 2
    err = capsys.readouterr().err
    assert "NVML did not initialise" in err and "nvidia-smi" in err and "--fake" in err
