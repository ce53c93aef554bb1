"""Every notebook is a test: run them `-j` at a time, each worker one long-lived interpreter that runs its notebooks one
after another with nbdev's own `test_nb` (slow and gpu cells skipped through settings.ini's tst_flags).
One interpreter per worker, not per notebook: a notebook's first `import torch, transformers, peft` costs ~7 s, and 30
notebooks would pay it 30 times. Longest notebooks first, handed out as workers free up, so no worker ends on a long tail.
Prints `PASS nbs/x.ipynb (Ns)` or `FAIL nbs/x.ipynb` and the notebook's error, one line each, in notebook order."""
import argparse, multiprocessing as mp, os, sys, time, traceback
from pathlib import Path

def _worker(todo, done, skip, basepath):
    import tempfile
    from nbdev.test import test_nb
    while (nb := todo.get()) is not None:
        t0 = time.time()
        with tempfile.TemporaryFile() as log:  # what the notebook's run prints (test_nb writes a failure's traceback to stderr)
            sys.stdout.flush(); sys.stderr.flush()
            saved = [os.dup(1), os.dup(2)]; os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)
            try: ok, _ = test_nb(Path(nb).absolute(), skip_flags=skip, basepath=basepath)
            except Exception: ok = False; traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                for fd, s in zip((1, 2), saved): os.dup2(s, fd); os.close(s)
            log.seek(0); err = "" if ok else log.read().decode("utf-8", "replace")
        done.put((nb, ok, time.time() - t0, err))

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+"); p.add_argument("-j", "--jobs", type=int, default=2)
    a = p.parse_args()
    from nbdev.config import get_config
    cfg = get_config()
    order = sorted(a.notebooks, key=lambda f: -os.path.getsize(f))  # size is a fair guess at run time
    ctx = mp.get_context("spawn")  # clean interpreters: nothing of this one (no torch) is inherited
    todo, done = ctx.Queue(), ctx.Queue()
    for nb in order: todo.put(nb)
    for _ in range(a.jobs): todo.put(None)
    procs = [ctx.Process(target=_worker, args=(todo, done, cfg.tst_flags.split(), str(cfg.config_path))) for _ in range(a.jobs)]
    for pr in procs: pr.start()
    results = {}
    while len(results) < len(order):
        if not any(pr.is_alive() for pr in procs) and done.empty(): break  # a worker died (killed, out of memory)
        try: nb, ok, dt, err = done.get(timeout=5)
        except Exception: continue
        results[nb] = (ok, dt, err)
    for pr in procs: pr.join(timeout=30)
    failed = 0
    for nb in sorted(a.notebooks):
        ok, dt, err = results.get(nb, (False, 0, "its worker died before it finished\n"))
        if ok: print(f"PASS {nb} ({dt:.0f}s)")
        else: failed += 1; print(f"FAIL {nb}\n" + "\n".join(err.splitlines()[-40:]))
    return 1 if failed else 0

if __name__ == "__main__": sys.exit(main())
