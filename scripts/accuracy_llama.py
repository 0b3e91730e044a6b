"""llama.cpp's side of scripts/bench-accuracy.sh: the greedy chat answer (48 tokens at most) of
each prompt of the TSV file through llama-cpp-python (its own chat template from the GGUF, 2
threads), whether it contains an accepted answer; prints one line per prompt, then
"correct: N of M".

Usage: python accuracy_llama.py MODEL PROMPTS.tsv
"""
import sys

from llama_cpp import Llama

model, prompts = sys.argv[1], sys.argv[2]
llm = Llama(model_path=model, n_threads=2, n_ctx=512, verbose=False)
n = ok = 0
with open(prompts, encoding="utf-8") as f:
    for line in f:
        if not line.strip():
            continue
        question, answers = line.rstrip("\n").split("\t")
        r = llm.create_chat_completion(
            messages=[{"role": "user", "content": question}], temperature=0, max_tokens=48)
        answer = r["choices"][0]["message"]["content"] or ""
        right = any(a in answer.lower() for a in answers.split("|"))
        n += 1
        ok += right
        print(f"{question}\t{'ok' if right else 'WRONG'}\t{answer!r}".replace("\n", " "))
print(f"correct: {ok} of {n}")
