//! Functions of each value: arithmetic, rounding, clamping and trigonometry.

use super::super::stats;
use super::Kind;

macro_rules! simple {
    ($f:expr) => {
        Kind::Instant(|v, _| Some($f(v)))
    };
}

pub(super) const FUNCTIONS: &[(&str, Kind)] = &[
    ("abs", simple!(f64::abs)),
    ("ceil", simple!(f64::ceil)),
    ("floor", simple!(f64::floor)),
    ("exp", simple!(f64::exp)),
    ("ln", simple!(f64::ln)),
    ("log2", simple!(f64::log2)),
    ("log10", simple!(f64::log10)),
    ("sqrt", simple!(f64::sqrt)),
    ("sgn", simple!(sgn)),
    ("round", Kind::Instant(round)),
    ("clamp", Kind::Instant(clamp)),
    (
        "clamp_min",
        Kind::Instant(|v, p| Some(stats::go_max(v, p[0]))),
    ),
    (
        "clamp_max",
        Kind::Instant(|v, p| Some(stats::go_min(v, p[0]))),
    ),
    ("sin", simple!(f64::sin)),
    ("cos", simple!(f64::cos)),
    ("tan", simple!(f64::tan)),
    ("asin", simple!(f64::asin)),
    ("acos", simple!(f64::acos)),
    ("atan", simple!(f64::atan)),
    ("sinh", simple!(f64::sinh)),
    ("cosh", simple!(f64::cosh)),
    ("tanh", simple!(f64::tanh)),
    ("asinh", simple!(f64::asinh)),
    ("acosh", simple!(f64::acosh)),
    ("atanh", simple!(f64::atanh)),
    ("deg", simple!(f64::to_degrees)),
    ("rad", simple!(f64::to_radians)),
];

fn sgn(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        v
    }
}

/// Rounds half up to the nearest multiple of the optional argument (1 by default).
fn round(v: f64, p: &[f64]) -> Option<f64> {
    let inverse = 1.0 / p.first().copied().unwrap_or(1.0);
    Some((v * inverse + 0.5).floor() / inverse)
}

/// `clamp(v, min, max)`; nothing at all when `max < min`.
fn clamp(v: f64, p: &[f64]) -> Option<f64> {
    let (min, max) = (p[0], p[1]);
    (max >= min || min.is_nan() || max.is_nan()).then(|| stats::go_max(min, stats::go_min(max, v)))
}
