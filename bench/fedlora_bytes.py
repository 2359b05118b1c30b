"""What federate.adapters_only saves per round: the bytes a FedAvg round moves with the LoRA adapters alone
beside what the full weights would move, for Llama shapes from the tests' tiny one to Llama-2-7B.

Priced the way the round log prices them (behemoth.federated.exchange.state_bytes: what Flower's
ArrayRecord.count_bytes counts) on models built on the meta device, so a 7B model costs no memory. A round
sends the global arrays to each of `--clients` clients and gets as many back; the round settings and
metrics (a few hundred bytes per message) are left out. Prints a table; writes nothing.

    .venv/bin/python bench/fedlora_bytes.py
    .venv/bin/python bench/fedlora_bytes.py --rank 16 --targets q_proj,k_proj,v_proj,o_proj --clients 10
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.config.sizes import format_size  # noqa: E402

SHAPES = {  # LlamaConfig keywords
    "tiny (tests)": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=300
    ),
    "TinyLlama-1.1B": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        vocab_size=32000,
    ),
    "Llama-2-7B": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
    ),
}


def round_bytes(shape: dict, rank: int, targets: list[str], dtype: str) -> tuple[int, int, int, int]:
    """(adapter parameters, all parameters, adapter bytes, full bytes) of one copy of the global model."""
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from behemoth.federated.exchange import exchanged_state, state_bytes

    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # as train.param_dtype builds: adapters in it too
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**shape))
            config = peft.LoraConfig(r=rank, target_modules=targets, task_type="CAUSAL_LM")
            model = peft.get_peft_model(model, config, autocast_adapter_dtype=False)
    finally:
        torch.set_default_dtype(previous)
    adapters, full = exchanged_state(model, adapters_only=True), model.state_dict()
    count = sum(t.numel() for t in adapters.values())
    return count, sum(t.numel() for t in full.values()), state_bytes(adapters), state_bytes(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    targets = args.targets.split(",")
    print(
        f"LoRA r={args.rank} on {', '.join(targets)}; a FedAvg round with {args.clients} clients (down + up)"
    )
    print(
        f"{'model':16} {'dtype':9} {'adapters':>22} {'adapters/round':>15} {'full/round':>12} {'saving':>8}"
    )
    for name, shape in SHAPES.items():
        for dtype in args.dtypes.split(","):
            count, total, adapter, full = round_bytes(shape, args.rank, targets, dtype)
            trips = 2 * args.clients
            print(
                f"{name:16} {dtype:9} {count:>11,} ({100 * count / total:.3f}%) "
                f"{format_size(trips * adapter):>15} {format_size(trips * full):>12} {full / adapter:>7.0f}x"
            )


if __name__ == "__main__":
    main()
