"""The batch scheduler: tokenized texts grouped into batches of similar length, and the batches run on the
process's workers (see runtime.workers), each vector back in its text's row."""

from . import runtime


def length_batches(lengths, batch_size, max_tokens, workers=1):
    """Group text indices into batches of similar token length, longest texts first: attention stacks texts of
    equal length into one step, and the padded [B, T, H] arrays the model hands back stay small (padding itself
    is never computed).

    A batch closes at batch_size texts, or when padding it to its longest text would pass its token budget
    (a lone text longer than that still gets its own batch). The budget is max_tokens; with several workers
    taking batches in turn it is also at most 1/workers of the tokens still waiting, but not under
    max_tokens / 8: the batches shrink towards the end, so the workers finish together instead of
    one running the last full batch alone. The floor is there because every batch has a fixed cost of Python and
    small NumPy calls, which a batch of a few tokens does not repay.
    """
    waiting = sum(lengths)
    batches, current, budget = [], [], max_tokens
    for i in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        if current and (len(current) == batch_size or (len(current) + 1) * lengths[current[0]] > budget):
            batches.append(current)
            current = []
        if not current and workers > 1:
            budget = min(max_tokens, max(max_tokens // 8, waiting // workers))
        current.append(i)
        waiting -= lengths[i]
    return batches + [current] if current else batches


def run_batches(embed, batches, out, threads, done=None):
    """out[rows] = embed(rows) for each batch of rows, `threads` batches at a time on the process's workers (each
    on one BLAS thread), or one after another in this thread when threads is 1 or there is one batch (then BLAS
    keeps the process's threads). done(n) is called with each batch's number of rows once they are in.

    The batches are submitted in order (the costliest first, as length_batches gives them). If one fails, or the
    caller is interrupted (Ctrl-C), the batches not begun are cancelled: the workers outlive this call and would
    otherwise run them for nobody."""
    done = done or (lambda rows: None)
    if threads == 1 or len(batches) <= 1:
        for rows in batches:
            out[rows] = embed(rows)
            done(len(rows))
        return out
    pool = runtime.workers(threads)
    with runtime.one_blas_thread():
        futures = [pool.submit(embed, rows) for rows in batches]
        try:
            for rows, future in zip(batches, futures):
                out[rows] = future.result()
                done(len(rows))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return out
