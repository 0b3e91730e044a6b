"""llama.cpp's row for scripts/bench-inference.sh: the same model, text and token counts through
llama-cpp-python (2 threads, greedy), best of REPEATS; prints prompt and generated tokens/s.

Usage: python bench_llama.py MODEL GEN_TOKENS PROMPT_TOKENS REPEATS
"""
import sys
import time

from llama_cpp import Llama

model, gen, n_prompt, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# The text of inference/examples/bench.rs.
TEXT = ("The history of the city of Paris begins in the third century before our era, when a "
        "Celtic tribe known as the Parisii settled on an island in the river Seine.")
llm = Llama(model_path=model, n_threads=2, n_threads_batch=2, n_ctx=512, verbose=False)
ids = llm.tokenize(TEXT.encode(), add_bos=False)[:n_prompt]
best_p, best_g = float("inf"), float("inf")
for _ in range(repeats + 1):  # the first run warms up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    p = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(gen - 1):
        tok = llm.sample(top_k=1, temp=0.0)
        llm.eval([tok])
    g = time.perf_counter() - t
    best_p, best_g = min(best_p, p), min(best_g, g)
print(f"{len(ids)} {len(ids) / best_p:.1f} {(gen - 1) / best_g:.1f}")
