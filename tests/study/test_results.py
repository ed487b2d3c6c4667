"""study.results.update_metrics: each stage replaces its own section of metrics.json."""
from study.results import update_metrics


def test_metrics_file_is_the_same_whichever_stage_finishes_first(tmp_path):
    """Stages run in parallel and finish in any order; the committed file must not change with that order."""
    sections = {"training": {"accuracy": 98.4}, "sweep": {"eps": [0.0, 0.1]}, "defense": {"seconds": 2}}
    files = []
    for order in (["training", "sweep", "defense"], ["defense", "training", "sweep"]):
        path = tmp_path / "-".join(order) / "metrics.json"
        for name in order:
            update_metrics(path, name, sections[name])
        files.append(path.read_bytes())
    assert files[0] == files[1]


def test_update_metrics_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "metrics.json"
    update_metrics(path, "training", {"accuracy": 98.4})
    update_metrics(path, "sweep", {"eps": [0.0]})
    got = update_metrics(path, "training", {"accuracy": 97.0})
    assert got == {"sweep": {"eps": [0.0]}, "training": {"accuracy": 97.0}}
