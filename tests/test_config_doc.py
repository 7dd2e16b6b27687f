"""docs/config.md is generated from the config code and must stay equal to it."""
from pathlib import Path

from s2dc_jax.tasks import config_doc

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    page = (REPO / "docs" / "config.md").read_text()
    assert page == config_doc.render(), (
        "docs/config.md is stale: run python -m s2dc_jax.tasks.config_doc --out docs/config.md")


def test_reference_lists_every_field_with_its_default():
    page = (REPO / "docs" / "config.md").read_text()
    defaults, _ = config_doc.pretrain_fields()
    for field in defaults:
        assert f"| `{field}` |" in page, field
    assert "| `model.crop_group` | `0` |" in page


def test_every_field_has_a_meaning():
    assert config_doc.undocumented() == [], "give these fields a comment where their default is set"
