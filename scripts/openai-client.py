#!/usr/bin/env python3
"""Talks to a Bitorch node's OpenAI-compatible endpoint with the official `openai` package.

Lists the models, asks one question without streaming and once with streaming, prints the
answers, and exits non-zero if anything fails (or an answer is empty).

Setup (once):
    python3 -m venv ~/.cache/bitorch/venv
    ~/.cache/bitorch/venv/bin/pip install openai

Run against a node (`--api-port`, default 8080) or the example server
(`cargo run -p bitorch-api --example serve -- MODEL_PATH 8080`):
    ~/.cache/bitorch/venv/bin/python scripts/openai-client.py --base-url http://127.0.0.1:8080/v1

Options: --model ID (default: the first model listed), --question TEXT, --max-tokens N,
--expect WORD (fail unless both answers contain WORD), --api-key btr_... (an API token from
`bitorch key api-token`: its user pays from the allowance they gave the node).
"""

import argparse
import sys

try:
    import openai
except ImportError:
    sys.exit(
        "openai-client.py: the 'openai' package is missing; install it with\n"
        "  python3 -m venv ~/.cache/bitorch/venv && ~/.cache/bitorch/venv/bin/pip install openai\n"
        "and run this script with ~/.cache/bitorch/venv/bin/python"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--question", default="What is the capital of France?")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--expect", default=None)
    ap.add_argument("--api-key", default="bitorch",
                    help="an API token (btr_...) to pay from its user's allowance; any other "
                         "text lets the node's own account pay (loopback)")
    args = ap.parse_args()

    # A Bitorch API token (btr_...) makes its user pay; the library insists on some key.
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300)

    models = client.models.list().data
    if not models:
        print("no models served", file=sys.stderr)
        return 1
    for m in models:
        print(f"model: {m.id} (owned by {m.owned_by})")
    model = args.model or models[0].id
    messages = [{"role": "user", "content": args.question}]

    done = client.chat.completions.create(
        model=model, messages=messages, max_tokens=args.max_tokens, temperature=0
    )
    answer = done.choices[0].message.content or ""
    print(f"answer: {answer}")
    print(
        f"finish_reason: {done.choices[0].finish_reason}, "
        f"usage: {done.usage.prompt_tokens} prompt + {done.usage.completion_tokens} completion tokens"
    )

    print("streamed: ", end="", flush=True)
    pieces = []
    finish = None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=args.max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.content or ""
        pieces.append(delta)
        print(delta, end="", flush=True)
        finish = chunk.choices[0].finish_reason or finish
    print()
    streamed = "".join(pieces)
    print(f"finish_reason: {finish}")

    failed = False
    if not answer.strip() or not streamed.strip():
        print("an answer was empty", file=sys.stderr)
        failed = True
    if streamed != answer:
        print("the streamed answer differs from the non-streamed one (greedy)", file=sys.stderr)
        failed = True
    if args.expect and (args.expect not in answer or args.expect not in streamed):
        print(f"an answer does not mention {args.expect!r}", file=sys.stderr)
        failed = True
    # An unknown model is an OpenAI error the library raises as NotFoundError.
    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=1)
        print("an unknown model was not refused", file=sys.stderr)
        failed = True
    except openai.NotFoundError as e:
        print(f"unknown model refused: {e.status_code} {e.code}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIError as e:
        print(f"openai-client.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
