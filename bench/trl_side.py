"""TRL's GRPOTrainer on the embedded task (CPU): the peer side of bench/grpo_vs_trl.py.

    python bench/trl_side.py MODEL_DIR OUT_JSON --steps N --prompts P --group G --lr LR --temperature T
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignmesh.coordinator.data import addition_splits
    from bench_eval import greedy_accuracy

    splits = addition_splits(0)
    train = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in splits.train])

    def exact(completions, answer, **_):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    config = GRPOConfig(output_dir="/tmp/trl-bench", per_device_train_batch_size=args.prompts * args.group,
                        num_generations=args.group, max_completion_length=4, learning_rate=args.lr,
                        max_steps=args.steps, beta=0.0, temperature=args.temperature, use_cpu=True,
                        logging_steps=10, report_to=[], save_strategy="no", bf16=args.dtype == "bfloat16",
                        epsilon=0.2,
                        adam_beta2=0.99, max_grad_norm=1.0, seed=0, dataloader_num_workers=0,
                        lr_scheduler_type="constant", warmup_steps=0)
    trainer = GRPOTrainer(model=args.model, reward_funcs=[exact], args=config, train_dataset=train,
                          callbacks=[Timer()])
    before = greedy_accuracy(trainer.model, trainer.processing_class, splits.test)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    after = greedy_accuracy(trainer.model, trainer.processing_class, splits.test)
    step = statistics.median(times[5:] or times)
    json.dump({"before": before, "after": after, "median_step_s": step, "wall_s": wall,
               "samples_per_s": args.prompts * args.group / step}, open(args.out, "w"))


if __name__ == "__main__":
    main()
