"""The statistics of the study: mean and sample standard deviation, the paired t-test with its confidence
interval and minimum detectable effect, and the step-time overhead."""
import math


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


ALPHA, POWER = 0.05, 0.8  # the significance level of every test here, and the power the detectable effect is for


def paired_ttest(a: list[float], b: list[float]) -> dict:
    """Two-sided paired t-test of a - b: n, per-pair differences, their mean and sample std, t, p, the half-width
    of the mean's 95% confidence interval (`ci`) and the minimum detectable effect (`mde`): the smallest true mean
    difference this test finds at level ALPHA with probability POWER when the differences scatter as observed,
    (t_{1-ALPHA/2} + t_{POWER}) * std / sqrt(n) with n - 1 degrees of freedom. t, p, ci and mde are nan for fewer
    than two pairs; t and p also when all differences are equal."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_std(d)
    n = len(d)
    t = p = ci = mde = math.nan
    if n >= 2:
        from scipy.stats import t as student_t

        se = s / math.sqrt(n)
        ci = float(student_t.ppf(1 - ALPHA / 2, n - 1)) * se
        mde = float(student_t.ppf(1 - ALPHA / 2, n - 1) + student_t.ppf(POWER, n - 1)) * se
        if s > 0:
            t = m / se
            p = float(2 * student_t.sf(abs(t), n - 1))
    return {"n": n, "diffs": d, "mean": m, "std": s, "t": t, "p": p, "ci": ci, "mde": mde}


def overhead_pct(step_ms: float, base_step_ms: float) -> float:
    """Step-time overhead in percent: how much longer a step takes than the baseline's."""
    return 100.0 * (step_ms / base_step_ms - 1.0)

