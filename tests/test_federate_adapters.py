"""federate.adapters_only: a real Flower simulation (2 clients, 2 rounds, FedAvg) fine-tunes LoRA adapters
on a tiny local Llama, each client on its half of a text corpus. Only the adapters travel (names, count and
bytes), the round log prices what the full weights would have cost, the base stays as it was, and the
federated adapters load with peft and merge with `behemoth export --merge`."""

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from safetensors.torch import load_file

import behemoth
from behemoth.config import RunConfig, load_config
from behemoth.config.federate import RefusedMessage, parse_round_settings
from behemoth.errors import BehemothError
from behemoth.federated.exchange import (
    exchanged_state,
    federated_model,
    load_checked,
    state_bytes,
    to_arrays,
)
from behemoth.federated.metrics import read_records
from behemoth.runs import RunDir, run_path
from behemoth.spec import DataSpec
from behemoth.training.assembly import load_trained_model
from tests.hf_tiny import TINY, hf_text_args, lora_corpus

VOCAB, RANK, CLIENTS, ROUNDS = 300, 4, 2, 2
TARGETS = ["q_proj", "v_proj"]


def base_overrides(cfg: RunConfig) -> list[str]:
    """`cfg`'s own overrides again, as load_config reads them (for variants of the federated run's config)."""
    return adapter_overrides(Path(cfg.runs_dir).parent, Path(cfg.data.path), Path(cfg.model.path), cfg.name)


def adapter_overrides(root: Path, text: Path, llama: Path, name: str) -> list[str]:
    return [
        *hf_text_args(root, text, llama, name),
        "data.train_limit=256",  # 128 blocks of 32 tokens per client
        f"train.lora.r={RANK}",
        f"train.lora.target_modules={json.dumps(TARGETS)}",
        f"federate.clients={CLIENTS}",
        "federate.fraction=1.0",
        f"federate.min_clients={CLIENTS}",
        f"federate.rounds={ROUNDS}",
        "federate.local_batch=16",
        "federate.client_cpus=2",  # one Ray actor: one torch import on these 2 cores
        "federate.adapters_only=true",
    ]


def simulate(cfg: RunConfig) -> Path:
    """`behemoth federate` (simulation) in this process, keeping Flower's and Ray's settings out of other
    tests."""
    saved, flwr_level, threads = dict(os.environ), logging.getLogger("flwr").level, torch.get_num_threads()
    try:
        behemoth.federate(cfg)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        logging.getLogger("flwr").setLevel(flwr_level)
        torch.set_num_threads(threads)
    return run_path(cfg)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """(run dir, config, tiny Llama dir, the Llama dir's file hashes before the run)."""
    root = tmp_path_factory.mktemp("fedlora")
    text, llama = lora_corpus(root, VOCAB)
    before = digest(llama)
    cfg = load_config(None, adapter_overrides(root, text, llama, "fedlora"))
    return simulate(cfg), cfg, llama, before


def node(pid: int) -> Context:
    """A SuperNode's context for partition `pid` of the run's clients."""
    config = {"partition-id": pid, "num-partitions": CLIENTS}
    return Context(run_id=1, node_id=100 + pid, node_config=config, state=RecordDict(), run_config={})


def initial_model(cfg: RunConfig) -> torch.nn.Module:
    """The global model before round 1, as the server builds it (federate.seed draws the adapters)."""
    return federated_model(cfg, DataSpec("language_model", (32,), VOCAB))


def test_only_the_adapters_travel_and_the_log_prices_the_full_weights(federation):
    run, cfg, _, _ = federation
    model = initial_model(cfg)
    adapters = exchanged_state(model, adapters_only=True)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    # lora_A and lora_B on q and v of each layer, nothing else
    assert sorted(adapters) == sorted(trainable)
    assert len(adapters) == TINY["num_hidden_layers"] * len(TARGETS) * 2
    assert all("lora_A" in name or "lora_B" in name for name in adapters)
    per_layer = len(TARGETS) * RANK * 2 * TINY["hidden_size"]  # A: r x hidden, B: hidden x r
    assert sum(t.numel() for t in adapters.values()) == TINY["num_hidden_layers"] * per_layer
    # state_bytes prices an ArrayRecord as Flower counts it, without building one
    sent, full = to_arrays(model, adapters_only=True).count_bytes(), to_arrays(model).count_bytes()
    assert state_bytes(adapters) == sent and state_bytes(model.state_dict()) == full
    assert full > 25 * sent  # 30x for this tiny Llama (its 300-token embeddings and head are most of it)

    records = [r for r in read_records(RunDir(run).metrics) if r["kind"] == "round"]
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for r in records[1:]:
        assert r["clients.replied"] == CLIENTS and r["aggregated"]
        # each client gets the adapters and sends adapters back, plus a few hundred bytes of settings/metrics
        for way in ("bytes.sent", "bytes.received"):
            assert CLIENTS * sent < r[way] < CLIENTS * (sent + 1000)
        # the same messages carrying the full weights instead, both ways
        assert r["bytes.full"] == r["bytes.sent"] + r["bytes.received"] + 2 * CLIENTS * (full - sent)
    # what the server kept of each round is what travelled: the adapters
    last = load_file(str(RunDir(run).federated / f"round-{ROUNDS:04d}" / "global.safetensors"))
    assert sorted(last) == sorted(adapters)
    summary = json.loads(RunDir(run).summary.read_text())
    assert summary["bytes_full"] == sum(r["bytes.full"] for r in records[1:])
    log = RunDir(run).federate_log.read_text()
    assert "adapters only; full weights:" in log and "KiB" in log


def test_the_adapters_learn_and_the_base_stays(federation):
    run, cfg, llama, before = federation
    records = [r for r in read_records(RunDir(run).metrics) if r["kind"] == "round"]
    assert records[-1]["test.loss"] < records[0]["test.loss"]
    start = exchanged_state(initial_model(cfg), adapters_only=True)
    last = load_file(str(RunDir(run).federated / f"round-{ROUNDS:04d}" / "global.safetensors"))
    for name, value in last.items():
        assert not torch.equal(value, start[name]), name  # lora_B starts at zero; every adapter moved
    assert digest(llama) == before  # nobody wrote to the base model's directory
    # the run's weights are the adapters only: the base is rebuilt from model.path
    assert sorted(load_file(str(RunDir(run).weights))) == sorted(last)
    ours = load_trained_model(run, cfg)
    fresh = initial_model(cfg)
    frozen = {k: v for k, v in fresh.state_dict().items() if k not in start}
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in frozen.items())


def test_peft_loads_the_federated_adapters_and_export_merges_them(federation, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, cfg, llama, _ = federation

    def fresh_llama():
        return AutoModelForCausalLM.from_pretrained(str(llama), local_files_only=True).eval()

    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_trained_model(run, cfg)(x)
        with_peft = PeftModel.from_pretrained(fresh_llama(), str(RunDir(run).adapter_dir)).eval()
        assert torch.equal(with_peft(input_ids=x).logits, expected)
        assert (expected - fresh_llama()(input_ids=x).logits).abs().max() > 1e-4
    merged_dir = tmp_path / "merged"
    behemoth.export(run, hf=merged_dir, merge=True)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), local_files_only=True).eval()
    with torch.no_grad():
        assert (merged(input_ids=x).logits - expected).abs().max() < 1e-4


@pytest.mark.parametrize(
    "privacy", [["federate.dp.mode=client"], ["federate.secagg=true", "federate.secagg_shares=2"]]
)
def test_private_and_secure_clients_train_and_send_the_adapters_only(federation, privacy):
    """Client DP-SGD (Opacus over peft's layers) and SecAgg+'s client (legacy lists in state_dict order) work
    on the adapters alone; the server side of both (and Flower's server-side DP clipping) only sees arrays."""
    from behemoth.federated.client_app import train_round
    from behemoth.federated.secagg_client import SecAggClient

    _, base_cfg, _, _ = federation
    cfg = load_config(None, [*base_overrides(base_cfg), *privacy])
    start = exchanged_state(initial_model(cfg), adapters_only=True)
    round_one = {"server-round": 1, "local-epochs": 1, "lr": 0.01}
    if cfg.federate.secagg:
        sent = [v.numpy() for v in start.values()]
        deltas, examples, _ = SecAggClient(node(1), cfg).fit(sent, round_one)
        assert [d.shape for d in deltas] == [tuple(v.shape) for v in start.values()] and examples > 0
        assert any(abs(d).max() > 0 for d in deltas)
    else:
        arrays = to_arrays(initial_model(cfg), adapters_only=True)
        update = train_round(cfg, parse_round_settings(round_one), node(0), arrays)
        assert list(update.weights) == list(start) and update.metrics["dp-steps"] > 0
        assert any(not torch.equal(update.weights[k], start[k]) for k in start)


def test_a_client_refuses_full_weights_when_only_adapters_travel(federation):
    _, cfg, _, _ = federation
    model = initial_model(cfg)
    with pytest.raises(RefusedMessage, match="the model does not have"):
        load_checked(model, to_arrays(model), adapters_only=True)
    with pytest.raises(RefusedMessage, match="no array"):
        load_checked(model, to_arrays(model, adapters_only=True), adapters_only=False)


def test_adapters_only_needs_lora():
    with pytest.raises(BehemothError) as err:
        load_config(None, ["federate.adapters_only=true"])
    assert "federate.adapters_only" in str(err.value) and "[train.lora]" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["shards", "dirichlet"])
def test_text_refuses_label_skewed_partitions(kind):
    from behemoth.federated.partition import partition

    fed = load_config(None, [f"federate.partition={kind}", "federate.clients=2"]).federate
    tokens = torch.arange(40 * 8).view(40, 8)  # (N, T) next-token targets, as text data holds them
    with pytest.raises(BehemothError, match="use federate.partition = 'iid'"):
        partition(tokens, fed)
    assert [len(p) for p in partition(tokens, fed.model_copy(update={"partition": "iid"}))] == [20, 20]


def test_the_cli_summary_prices_the_full_weights(federation, capsys):
    from behemoth.cli.printing import print_federated
    from behemoth.config.sizes import format_size

    run = federation[0]
    summary = json.loads(RunDir(run).summary.read_text())
    print_federated(run)
    out = " ".join(capsys.readouterr().out.split())
    assert f"sent {format_size(summary['bytes_sent'])}," in out
    assert f"(adapters only; the full weights: {format_size(summary['bytes_full'])})" in out
    sizes = [format_size(n) for n in (512, 11508, 3 * 2**20, 2**31)]
    assert sizes == ["512 B", "11.2 KiB", "3.0 MiB", "2.00 GiB"]
