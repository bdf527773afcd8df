"""Urza's store: round trip, seeding, quarantine, the catalog protocol, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamiyo_bus.urza.adapters import build_adapter, parameter_count
from tamiyo_bus.urza.blueprint import REFERENCE_WIDTH, AdapterKind, ConstructorSpec
from tamiyo_bus.urza.catalogue import default_catalogue, make_blueprint
from tamiyo_bus.urza.store import UnknownBlueprint, UrzaSettings, UrzaStore
from tamiyo_bus.urza_client import CachedCatalog
from weatherlight.cli import main


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "library" / "urza.sqlite"


def test_round_trip_survives_reopening(db: Path) -> None:
    blueprint = make_blueprint(
        "test-gated-24", "gated 24", AdapterKind.GATED_MLP, 24, tier=2, risk=0.3,
        allowed_parameters={"init_scale": (0.0, 0.01)},
    )  # fmt: skip
    UrzaStore(UrzaSettings(db_path=db)).add(blueprint)
    reopened = UrzaStore(UrzaSettings(db_path=db))
    assert reopened.get("test-gated-24") == blueprint
    assert [b.blueprint_id for b in reopened.list()] == ["test-gated-24"]
    meta = reopened.lookup(["test-gated-24", "missing"])
    assert set(meta) == {"test-gated-24"}
    assert meta["test-gated-24"].parameter_count == blueprint.parameter_count
    assert meta["test-gated-24"].compatible_layer_kinds == ("linear",)
    with pytest.raises(ValueError, match="already exists"):
        reopened.add(blueprint)
    with pytest.raises(UnknownBlueprint):
        reopened.get("missing")


def test_seeded_catalogue_covers_every_adapter_family(db: Path) -> None:
    store = UrzaStore.open_seeded(UrzaSettings(db_path=db))
    entries = store.list()
    assert {b.constructor.kind for b in entries} == set(AdapterKind)
    assert len(entries) == len(default_catalogue())
    for b in entries:
        assert b.parameter_count == parameter_count(b.constructor, REFERENCE_WIDTH)
    assert any(b.quarantined for b in entries)
    assert {"linear", "conv2d"} <= {kind for b in entries for kind in b.layer_kinds}


def test_quarantine_is_visible_to_lookups_and_survives_reseeding(db: Path) -> None:
    settings = UrzaSettings(db_path=db)
    store = UrzaStore.open_seeded(settings)
    store.quarantine("mlp-res-16", "loss spikes in run 7")
    assert store.lookup(["mlp-res-16"])["mlp-res-16"].quarantined
    assert UrzaStore.open_seeded(settings).get("mlp-res-16").quarantine_reason == (
        "loss spikes in run 7"
    )
    store.quarantine("mlp-res-16", "", quarantined=False)
    assert not store.get("mlp-res-16").quarantined
    with pytest.raises(UnknownBlueprint):
        store.quarantine("no-such-blueprint", "x")


def test_cached_catalog_reads_the_store(db: Path) -> None:
    store = UrzaStore.open_seeded(UrzaSettings(db_path=db))
    catalog = CachedCatalog(store, deadline_ms=1_000.0, ttl_s=60.0, max_stale_s=60.0)
    catalog.start()
    assert catalog.prefetch(["mlp-res-8", "conv-res-8"], timeout_s=5.0)
    resolution = catalog.resolve(["mlp-res-8", "conv-res-8"], wait_s=0.0)
    assert not resolution.timed_out
    assert resolution.metadata["conv-res-8"].fits("conv2d")
    assert not resolution.metadata["conv-res-8"].fits("linear")


@pytest.mark.parametrize("kind", list(AdapterKind))
def test_every_constructor_builds_a_zero_delta_adapter(kind: AdapterKind) -> None:
    import torch

    module = build_adapter(ConstructorSpec(kind, 4), 6)
    x = torch.randn(3, 6, 5, 5) if kind is AdapterKind.CONV_RESIDUAL else torch.randn(3, 6)
    out = module(x)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # a new seed changes nothing until it learns


def test_invalid_records_are_refused() -> None:
    with pytest.raises(ValueError):
        make_blueprint("x", "x", AdapterKind.LOW_RANK, 4, tier=0, risk=1.5)
    with pytest.raises(ValueError):
        make_blueprint("has space", "x", AdapterKind.LOW_RANK, 4, tier=0, risk=0.1)
    with pytest.raises(ValueError):
        ConstructorSpec(AdapterKind.LOW_RANK, 0)


def test_cli_list_add_quarantine(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["urza", "--db", str(db)]
    assert main([*base, "add", "mine", "--kind", "low_rank", "--size", "8", "--risk", "0.2",
                 "--allow", "init_scale=0:0.01"]) == 0  # fmt: skip
    assert main([*base, "quarantine", "mine", "--reason", "bad idea"]) == 0
    assert main([*base, "list"]) == 0
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if row.startswith("mine "))
    assert "QUARANTINE" in line
    assert "bad idea" in line
    store = UrzaStore(UrzaSettings(db_path=db))
    assert store.get("mine").allowed_parameters == {"init_scale": (0.0, 0.01)}
    assert main([*base, "quarantine", "nope"]) == 1
    assert main([*base, "add", "mine", "--kind", "low_rank", "--size", "8"]) == 1
