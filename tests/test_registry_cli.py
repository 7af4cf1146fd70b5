"""`rigwatch-detector models list|show|promote|rollback` through main([...]) on a real file store."""
from __future__ import annotations

import json

import pytest

from detector.cli import main
from detector.persistence import FilePersistence
from detector.registry import Registry
from detector.store import ModelStore
from detector.timefmt import iso

D = "gpu_thermal"
CREATED = iso(1_790_000_000.0)


@pytest.fixture
def store_dir(tmp_path):
    root = tmp_path / "store"
    store = ModelStore(FilePersistence(root), clock=lambda: 1_790_000_000.0)
    reg = Registry(store)
    for n in range(3):
        mv = store.save(D, {"n": n}, {"data_fingerprint": f"fp{n}"}, prune=False)
        reg.propose(D, mv.version)
    store.save("gpu_power", {"n": 0})  # a store from before the registry: no record
    return root


def run(capsys, *argv):
    rc = main(["models", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_prints_a_table_of_versions_aliases_states_and_fingerprints(store_dir, capsys):
    rc, out, _ = run(capsys, "list", "--store", str(store_dir))
    assert rc == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["DETECTOR", "VERSION", "ALIAS", "STATE", "CREATED", "FINGERPRINT"]
    assert ["gpu_power", "1", "champion", "champion", CREATED, "-"] in lines
    assert ["gpu_thermal", "3", "champion", "champion", CREATED, "fp2"] in lines
    assert ["gpu_thermal", "2", "rollback", "retired", CREATED, "fp1"] in lines
    assert ["gpu_thermal", "1", "-", "retired", CREATED, "fp0"] in lines


def test_list_json_is_machine_readable(store_dir, capsys):
    rc, out, _ = run(capsys, "list", "--json", "--store", str(store_dir))
    rows = {(r["detector"], r["version"]): r for r in json.loads(out)["models"]}
    assert rc == 0 and rows[(D, 3)]["aliases"] == ["champion"] and rows[(D, 2)]["state"] == "retired"


def test_promote_then_rollback_change_the_champion(store_dir, capsys):
    rc, out, _ = run(capsys, "promote", D, "1", "--store", str(store_dir))
    assert rc == 0 and "v1 is champion" in out
    assert Registry(ModelStore(FilePersistence(store_dir))).record(D)["champion"] == 1
    rc, out, _ = run(capsys, "rollback", D, "--store", str(store_dir))
    assert rc == 0 and "rolled back to v3" in out
    rc, out, _ = run(capsys, "show", D, "--store", str(store_dir))
    shown = json.loads(out)
    assert [(v["version"], v["state"]) for v in shown["versions"]] == [(3, "champion"), (2, "retired"),
                                                                       (1, "rejected")]
    assert [d["outcome"] for d in shown["decisions"]][-2:] == ["promoted", "rolled back"]


def test_show_one_version_includes_its_metadata(store_dir, capsys):
    rc, out, _ = run(capsys, "show", D, "2", "--store", str(store_dir))
    shown = json.loads(out)
    assert rc == 0 and shown["version"] == 2 and shown["metadata"]["data_fingerprint"] == "fp1"


def test_the_config_names_the_store(store_dir, tmp_path, capsys):
    cfg = tmp_path / "detector.yml"
    cfg.write_text(f"store: {{path: '{store_dir}'}}\ndetectors: [{{name: {D}, query: up, model: robust_z}}]\n")
    rc, out, _ = run(capsys, "list", "--config", str(cfg))
    assert rc == 0 and "gpu_thermal" in out


@pytest.mark.parametrize("argv, message", [
    (["promote", "nope", "1"], "unknown detector 'nope'"),
    (["promote", D, "9"], "unknown version 9 of 'gpu_thermal'"),
    (["show", "nope"], "unknown detector 'nope'"),
    (["show", D, "9"], "unknown version 9 of 'gpu_thermal'"),
    (["rollback", "nope"], "unknown detector 'nope'"),
    (["rollback", "gpu_power"], "'gpu_power' has no rollback target"),
])
def test_errors_exit_2_with_a_clear_line(store_dir, capsys, argv, message):
    rc, _, err = run(capsys, *argv, "--store", str(store_dir))
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_a_missing_store_exits_2_naming_the_flag(tmp_path, capsys):
    rc, _, err = run(capsys, "list", "--store", str(tmp_path / "nowhere"))
    assert rc == 2 and "--store: no such directory" in err
    assert not (tmp_path / "nowhere").exists()


def test_a_bad_version_argument_is_a_usage_error(store_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["models", "promote", D, "two", "--store", str(store_dir)])
    assert e.value.code == 2 and "invalid int value: 'two'" in capsys.readouterr().err


def test_the_cli_leaves_a_running_serves_temp_files_alone(store_dir, capsys):
    in_flight = store_dir / D / ".v000004.npz.k3j2ab_9.tmp"  # a save of the serve beside it
    in_flight.write_bytes(b"half a save")
    assert run(capsys, "list", "--store", str(store_dir))[0] == 0
    assert run(capsys, "promote", D, "2", "--store", str(store_dir))[0] == 0
    assert in_flight.exists()
