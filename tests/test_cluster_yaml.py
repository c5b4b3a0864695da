"""cluster.yaml is a real Ray cluster-launcher file: it validates against Ray's own schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _validate(config: dict) -> None:
    """What `ray up` does before it launches anything: fill in defaults, then check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_cluster_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    assert config["provider"]["type"] == "aws"
    assert any("pip install -e ." in cmd for cmd in config["setup_commands"])
    assert "127.0.0.1" in " ".join(config["head_start_ray_commands"])  # dashboard not exposed


def test_schema_check_is_real() -> None:
    """The validator rejects a broken variant, so the test above can fail."""
    import jsonschema

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        _validate(config)


@pytest.mark.parametrize("variant", ["gcp", "local"])
def test_commented_provider_variants_validate(variant: str) -> None:
    """The commented GCP and on-prem blocks, uncommented into the config, also pass the schema."""
    text = (REPO / "cluster.yaml").read_text()
    blocks = re.split(r"^# --- ", text, flags=re.M)
    block = next(b for b in blocks[1:] if (variant == "gcp") == b.startswith("GCP"))
    body = "\n".join(line[2:] for line in block.splitlines()[1:] if line.startswith("# "))
    config = yaml.safe_load(blocks[0])
    if variant == "local":  # on-prem clusters list machines instead of node types
        for key in ("available_node_types", "head_node_type", "max_workers"):
            config.pop(key)
    config.update(yaml.safe_load(body))
    _validate(config)
