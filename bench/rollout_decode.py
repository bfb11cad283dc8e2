"""The rollout's shared-prefix sampling loop vs transformers ``generate``, in one process, same batch and seed.

    python bench/rollout_decode.py [--model DIR] [--dtype bfloat16]

For each shape (prompts x samples per prompt; 4 new tokens, temperature 0.7, one thread) it times both calls,
checks they drew the same tokens, and prints the ratio generate / loop. Default model: the embedded tiny one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import median_time, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from alignmesh.coordinator.data import addition_splits
    from alignmesh.services.models.loading import load_causal_lm, load_tokenizer
    from alignmesh.services.models.tiny import create_model_dir
    from alignmesh.services.rollout import decode

    path = args.model or str(create_model_dir(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    model, tok = load_causal_lm(path, dtype=args.dtype).eval(), load_tokenizer(path)
    pad, eos = int(tok.pad_token_id), int(tok.eos_token_id)
    rows = [["prompts x samples", "generate ms", "shared-prefix loop ms", "generate / loop", "same tokens"]]
    for prompts, n in ((32, 8), (64, 8), (64, 1), (8, 16)):
        batch = [tok(e.prompt)["input_ids"] for e in addition_splits(0).train[:prompts]]
        ids, mask = decode.left_padded(batch, pad)

        def generate():
            torch.manual_seed(1)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=1.0,
                                 top_k=0, max_new_tokens=4, num_return_sequences=n, pad_token_id=pad,
                                 eos_token_id=eos, output_logits=True, return_dict_in_generate=True)
            return out.sequences[:, ids.shape[1]:]

        def loop():
            torch.manual_seed(1)
            return decode.sample(model, batch, n, 4, decode.warpers(0.7, 1.0), pad, eos)[0]

        with torch.no_grad():
            a, b = generate(), loop()
            same = a.shape == b.shape and torch.equal(a, b)
            g, s = median_time(generate, args.repeats), median_time(loop, args.repeats)
        rows.append([f"{prompts} x {n}", f"{g * 1000:.1f}", f"{s * 1000:.1f}", f"{g / s:.2f}", str(same)])
    print(table(rows))


if __name__ == "__main__":
    main()
