//! Functions and subqueries over the in-memory storage of [`super::tests`].

use super::tests::{Mem, check, counters, error, groups, instant};
use crate::promql::PromError;

#[test]
fn rate_increase_and_delta_extrapolate_as_prometheus() {
    let mem = counters();
    // 0 10 20 5 15 every minute: 35 of increase with the reset, the zero point at t=0.
    check(&mem, "increase(c[5m])", 240, &[("{job=\"a\"}", 35.0)]);
    check(&mem, "rate(c[5m])", 240, &[("{job=\"a\"}", 35.0 / 300.0)]);
    // 1 3 2: 1 over 120 s, extrapolated by 60 s at the start.
    check(&mem, "delta(g[3m])", 120, &[("{job=\"a\"}", 1.5)]);
    // One sample in the window: no rate.
    check(&mem, "rate(c[1m])", 240, &[]);
    let mem = Mem::load(300, &[("h", "0+10x10")]);
    check(&mem, "increase(h[10m])", 3000, &[("{}", 20.0)]);
    check(&mem, "rate(h[10m])", 3000, &[("{}", 20.0 / 600.0)]);
    check(&mem, "rate(h[5m])", 3000, &[]);
}

#[test]
fn instant_rates_and_counts_of_changes() {
    let mem = counters();
    check(&mem, "irate(c[5m])", 240, &[("{job=\"a\"}", 10.0 / 60.0)]);
    check(&mem, "irate(c[5m])", 180, &[("{job=\"a\"}", 5.0 / 60.0)]);
    check(&mem, "idelta(c[5m])", 180, &[("{job=\"a\"}", -15.0)]);
    check(&mem, "resets(c[5m])", 240, &[("{job=\"a\"}", 1.0)]);
    check(&mem, "changes(c[5m])", 240, &[("{job=\"a\"}", 4.0)]);
    check(&mem, "deriv(lin[5m])", 120, &[("{job=\"a\"}", 1.0)]);
    check(
        &mem,
        "predict_linear(lin[5m], 60)",
        120,
        &[("{job=\"a\"}", 180.0)],
    );
    check(&mem, "deriv(g[1m])", 120, &[]);
}

#[test]
fn over_time_functions() {
    let mem = counters();
    for (f, v) in [
        ("avg_over_time", 2.5),
        ("sum_over_time", 10.0),
        ("min_over_time", 1.0),
        ("max_over_time", 4.0),
        ("count_over_time", 4.0),
        ("stdvar_over_time", 1.25),
        ("stddev_over_time", 1.25f64.sqrt()),
        ("present_over_time", 1.0),
    ] {
        check(&mem, &format!("{f}(o[5m])"), 180, &[("{job=\"a\"}", v)]);
    }
    check(
        &mem,
        "quantile_over_time(0.5, o[5m])",
        180,
        &[("{job=\"a\"}", 2.5)],
    );
    check(
        &mem,
        "last_over_time(o[5m])",
        180,
        &[("{__name__=\"o\", job=\"a\"}", 4.0)],
    );
    check(
        &mem,
        "first_over_time(o[2m])",
        180,
        &[("{__name__=\"o\", job=\"a\"}", 3.0)],
    );
    check(&mem, "absent_over_time(o[5m])", 180, &[]);
    check(
        &mem,
        "absent_over_time(nope{job=\"a\"}[5m])",
        180,
        &[("{job=\"a\"}", 1.0)],
    );
}

#[test]
fn subqueries_evaluate_at_aligned_steps() {
    let mem = Mem::load(60, &[("x", "0+1x10")]);
    // Steps 180, 240, 300: values 3, 4, 5.
    check(&mem, "max_over_time(x[3m:1m])", 300, &[("{}", 5.0)]);
    check(&mem, "count_over_time(x[3m:1m])", 300, &[("{}", 3.0)]);
    // Steps 120 and 240 (0 lies on the excluded left edge).
    check(&mem, "sum_over_time(x[5m:2m])", 300, &[("{}", 6.0)]);
    check(
        &mem,
        "sum_over_time(x[3m:1m] offset 1m)",
        300,
        &[("{}", 9.0)],
    );
    check(
        &mem,
        "last_over_time((x * 2)[2m:1m] @ 120)",
        300,
        &[("{}", 4.0)],
    );
    check(
        &mem,
        "max_over_time(rate(x[2m])[4m:])",
        300,
        &[("{}", 1.0 / 60.0)],
    );
}

#[test]
fn value_functions_drop_the_name() {
    let mem = groups();
    check(
        &mem,
        "abs(-n)",
        0,
        &[("{g=\"a\"}", 10.0), ("{g=\"b\"}", 20.0)],
    );
    let gi = |i: &str, g: &str| format!("{{g=\"{g}\", i=\"{i}\"}}");
    let (a1, a2, b3) = (gi("1", "a"), gi("2", "a"), gi("3", "b"));
    check(
        &mem,
        "clamp(m, 2, 4)",
        0,
        &[(&a1, 2.0), (&a2, 3.0), (&b3, 4.0)],
    );
    check(&mem, "clamp(m, 5, 1)", 0, &[]);
    check(
        &mem,
        "clamp_min(m, 2)",
        0,
        &[(&a1, 2.0), (&a2, 3.0), (&b3, 5.0)],
    );
    check(
        &mem,
        "clamp_max(m, 2)",
        0,
        &[(&a1, 1.0), (&a2, 2.0), (&b3, 2.0)],
    );
    check(
        &mem,
        "round(m, 2)",
        0,
        &[(&a1, 2.0), (&a2, 4.0), (&b3, 6.0)],
    );
    check(&mem, "round(vector(-2.5))", 0, &[("{}", -2.0)]);
    check(&mem, "round(vector(2.5))", 0, &[("{}", 3.0)]);
    check(&mem, "sgn(vector(-3))", 0, &[("{}", -1.0)]);
    check(&mem, "sqrt(vector(16))", 0, &[("{}", 4.0)]);
    check(&mem, "ln(vector(1))", 0, &[("{}", 0.0)]);
    check(&mem, "log2(vector(8))", 0, &[("{}", 3.0)]);
    check(&mem, "log10(vector(100))", 0, &[("{}", 2.0)]);
    check(&mem, "exp(vector(0))", 0, &[("{}", 1.0)]);
    check(
        &mem,
        "ceil(vector(1.2)) + floor(vector(1.8))",
        0,
        &[("{}", 3.0)],
    );
    check(&mem, "deg(vector(pi()))", 0, &[("{}", 180.0)]);
    check(&mem, "rad(vector(180))", 0, &[("{}", std::f64::consts::PI)]);
    check(
        &mem,
        "cos(vector(0)) + sin(vector(0)) + tan(vector(0))",
        0,
        &[("{}", 1.0)],
    );
    check(
        &mem,
        "cosh(vector(0)) + acos(vector(1)) + asinh(vector(0))",
        0,
        &[("{}", 1.0)],
    );
}

#[test]
fn scalars_vectors_and_absence() {
    let mem = groups();
    check(&mem, "time()", 90, &[("scalar", 90.0)]);
    check(&mem, "vector(3)", 0, &[("{}", 3.0)]);
    check(&mem, "scalar(n{g=\"a\"})", 0, &[("scalar", 10.0)]);
    check(&mem, "scalar(m)", 0, &[("scalar", f64::NAN)]);
    check(&mem, "absent(m)", 0, &[]);
    check(
        &mem,
        "absent(nope{a=\"b\",c=~\"x\"})",
        0,
        &[("{a=\"b\"}", 1.0)],
    );
    check(&mem, "absent(nope{a=\"b\",a=\"c\"})", 0, &[("{}", 1.0)]);
    let mem = Mem::load(60, &[("x", "0+1x10")]);
    check(&mem, "timestamp(x)", 330, &[("{}", 300.0)]);
    check(&mem, "timestamp(x @ 125)", 330, &[("{}", 120.0)]);
    check(&mem, "timestamp(-x)", 330, &[("{}", 330.0)]);
}

#[test]
fn calendar_functions_in_utc() {
    let mem = groups();
    // 1700000000 is 2023-11-14T22:13:20Z, a Tuesday.
    for (f, v) in [
        ("minute", 13.0),
        ("hour", 22.0),
        ("day_of_month", 14.0),
        ("day_of_week", 2.0),
        ("day_of_year", 318.0),
        ("days_in_month", 30.0),
        ("month", 11.0),
        ("year", 2023.0),
    ] {
        check(&mem, &format!("{f}(vector(1700000000))"), 0, &[("{}", v)]);
    }
    check(&mem, "hour()", 1_700_000_000, &[("{}", 22.0)]);
    check(
        &mem,
        "days_in_month(vector(1709164800))",
        0,
        &[("{}", 29.0)],
    );
}

#[test]
fn label_functions_rewrite_labels() {
    let mem = groups();
    check(
        &mem,
        "label_replace(n, \"x\", \"$1-z\", \"g\", \"(.*)\")",
        0,
        &[
            ("{__name__=\"n\", g=\"a\", x=\"a-z\"}", 10.0),
            ("{__name__=\"n\", g=\"b\", x=\"b-z\"}", 20.0),
        ],
    );
    check(
        &mem,
        "label_replace(n, \"g\", \"\", \"g\", \"a\")",
        0,
        &[
            ("{__name__=\"n\"}", 10.0),
            ("{__name__=\"n\", g=\"b\"}", 20.0),
        ],
    );
    check(
        &mem,
        "label_join(n2, \"j\", \"-\", \"g\", \"owner\")",
        0,
        &[("{__name__=\"n2\", g=\"a\", j=\"a-x\", owner=\"x\"}", 1.0)],
    );
    let e = error(&mem, "label_replace(n, \"g\", \"\", \"g\", \".*\")", 0);
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    assert!(matches!(
        error(&mem, "label_replace(n, \"1x\", \"\", \"g\", \".*\")", 0),
        PromError::BadData(_)
    ));
}

#[test]
fn a_range_function_of_two_metrics_refuses_their_collision() {
    let mem = Mem::load(60, &[("x{a=\"1\"}", "1 2"), ("y{a=\"1\"}", "1 2")]);
    let e = error(&mem, "rate({a=\"1\"}[5m])", 60);
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    assert_eq!(instant(&mem, "last_over_time({a=\"1\"}[5m])", 60).len(), 2);
}
