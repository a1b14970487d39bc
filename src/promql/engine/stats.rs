//! Numeric helpers shared by aggregations and range functions, computed the way Prometheus
//! computes them (Kahan–Neumaier summation, incremental means, its quantile interpolation).

/// One step of Kahan–Neumaier summation: the new sum and the new compensation.
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The compensated sum of `values`.
pub(super) fn sum(values: &[f64]) -> f64 {
    let (s, c) = values
        .iter()
        .fold((0.0, 0.0), |(s, c), &v| kahan_inc(v, s, c));
    s + c
}

/// The mean, summing while the sum stays finite and switching to an incremental mean when
/// it would overflow (as Prometheus's `avg` and `avg_over_time` do).
pub(super) fn mean(values: &[f64]) -> f64 {
    let (mut sum, mut c, mut mean) = (0.0, 0.0, 0.0);
    let mut incremental = false;
    for (i, &v) in values.iter().enumerate() {
        let count = (i + 1) as f64;
        if !incremental {
            let (s, nc) = kahan_inc(v, sum, c);
            if count == 1.0 || !s.is_infinite() {
                (sum, c) = (s, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        let n = values.len() as f64;
        sum / n + c / n
    }
}

/// The population variance, by Welford's method with compensated sums.
pub(super) fn variance(values: &[f64]) -> f64 {
    let (mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0);
    for (i, &v) in values.iter().enumerate() {
        let count = (i + 1) as f64;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / values.len() as f64
}

/// The φ-quantile with linear interpolation between the closest ranks; sorts `values`.
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as in Prometheus.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// The largest value; NaN only if every value is NaN.
pub(super) fn max(values: &[f64]) -> f64 {
    values
        .iter()
        .fold(f64::NAN, |m, &v| if v > m || m.is_nan() { v } else { m })
}

/// The smallest value; NaN only if every value is NaN.
pub(super) fn min(values: &[f64]) -> f64 {
    values
        .iter()
        .fold(f64::NAN, |m, &v| if v < m || m.is_nan() { v } else { m })
}

/// Go's `math.Max`: NaN if either is NaN.
pub(super) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is NaN.
pub(super) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_compensated() {
        assert_eq!(sum(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(mean(&[f64::MAX, f64::MAX]), f64::MAX);
        assert_eq!(variance(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), 4.0);
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(0.5, &mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(quantile(0.9, &mut [0.0, 10.0]), 9.0);
        assert_eq!(quantile(-1.0, &mut [1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert!(quantile(f64::NAN, &mut [1.0]).is_nan());
    }

    #[test]
    fn min_and_max_skip_nan() {
        assert_eq!(max(&[f64::NAN, 1.0, 3.0]), 3.0);
        assert_eq!(min(&[2.0, f64::NAN, 1.0]), 1.0);
        assert!(max(&[f64::NAN]).is_nan());
    }
}
