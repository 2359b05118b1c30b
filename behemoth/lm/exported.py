"""Read back an exported Hugging Face directory with transformers alone (no behemoth model code): the check
that an export is what transformers users get."""

from pathlib import Path


def transformers_greedy(folder: Path, prompt: str, max_new_tokens: int) -> str:
    """`prompt` continued greedily by `max_new_tokens` tokens, with `AutoModelForCausalLM`, `AutoTokenizer`
    and `generate` loaded from `folder` (local files only, no remote code), decoded by that tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,  # as behemoth's sampler: an end-of-text token does not stop it
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
    return tokenizer.decode(out[0], skip_special_tokens=False)
