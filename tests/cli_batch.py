"""Run many CLI invocations in one process, each with its own captured stdout/stderr (fd level).

For the property-style tests: a hundred option values cost one interpreter start instead of a
hundred. Output is captured at the file-descriptor level, so what llama.cpp (or a debugger it
starts on an abort) writes is captured too. Each result is one JSON line, written and flushed
before the next case starts: when the process dies (an abort), the last ``start`` line names the
case that killed it.

    python -m tests.cli_batch CASES.json RESULTS.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main(cases_path: str, results_path: str) -> None:
    from llama3zh_local.cli import app

    cases = json.loads(open(cases_path, encoding="utf-8").read())
    with open(results_path, "a", encoding="utf-8") as results:
        for args in cases:
            results.write(json.dumps({"start": args}) + "\n")
            results.flush()
            t0 = time.perf_counter()
            code, out, err = run_one(app, args)
            took = round(time.perf_counter() - t0, 3)
            result = {"args": args, "code": code, "out": out, "err": err, "seconds": took}
            results.write(json.dumps(result) + "\n")
            results.flush()


def run_one(app: object, args: list[str]) -> tuple[int, str, str]:
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        code: int = 0
        try:
            app(args, prog_name="llama3zh")  # type: ignore[operator]
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001 - recorded as a failure of the case
            sys.stderr.write(f"Traceback (escaped to the batch runner): {e!r}\n")
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return (
            code,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
