//! Calendar functions of a time in seconds since the epoch, in UTC.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::Kind;

pub(super) const FUNCTIONS: &[(&str, Kind)] = &[
    ("minute", Kind::Date(|t| t.minute() as f64)),
    ("hour", Kind::Date(|t| t.hour() as f64)),
    ("day_of_month", Kind::Date(|t| t.day() as f64)),
    (
        "day_of_week",
        Kind::Date(|t| t.weekday().num_days_from_sunday() as f64),
    ),
    ("day_of_year", Kind::Date(|t| t.ordinal() as f64)),
    ("days_in_month", Kind::Date(days_in_month)),
    ("month", Kind::Date(|t| t.month() as f64)),
    ("year", Kind::Date(|t| t.year() as f64)),
];

fn days_in_month(t: DateTime<Utc>) -> f64 {
    let leap = t.year() % 4 == 0 && (t.year() % 100 != 0 || t.year() % 400 == 0);
    match t.month() {
        2 if leap => 29.0,
        2 => 28.0,
        4 | 6 | 9 | 11 => 30.0,
        _ => 31.0,
    }
}
