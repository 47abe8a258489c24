//! ISO 8601 durations in request bodies (`max_duration_json`), bounded from above: a
//! forecast trigger's `duration` decides how many jobs FlexMeasures queues (one per
//! hour of it at most), and nothing in FlexMeasures 1.0.1 bounds it.
//!
//! Only the designator form is read (`P1Y2M3W4DT5H6M7.5S`, as isodate reads it); a
//! year counts 366 days and a month 31, so the bound holds whatever the calendar.
//! Anything else (signs, the `P0001-02-03` form, empty parts) has no bound and is
//! refused where a bound is set.

use std::time::Duration;

/// The longest `text` can last, or `None` when it is not a duration flexgate reads.
pub fn upper_bound(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut seconds = 0f64;
    let mut parts = 0;
    for (section, units) in [
        (
            date,
            &[
                ('Y', 366.0 * 86400.0),
                ('M', 31.0 * 86400.0),
                ('W', 7.0 * 86400.0),
                ('D', 86400.0),
            ][..],
        ),
        (
            time.unwrap_or(""),
            &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..],
        ),
    ] {
        let mut section = section;
        let mut units = units.iter();
        while !section.is_empty() {
            let len = section
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
                .filter(|&n| n > 0)?;
            let number: f64 = section[..len].replace(',', ".").parse().ok()?;
            let designator = section[len..].chars().next()?;
            // Designators in order, each once.
            let (_, scale) = units.by_ref().find(|(d, _)| *d == designator)?;
            seconds += number * scale;
            parts += 1;
            section = &section[len + 1..];
        }
    }
    (parts > 0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds.min(1e15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designator_durations_are_bounded_from_above() {
        let day = 86400;
        for (text, secs) in [
            ("P1D", day),
            ("PT48H", 2 * day),
            ("P7D", 7 * day),
            ("P1W", 7 * day),
            ("P1M", 31 * day),
            ("P1Y", 366 * day),
            ("P1DT12H", day + day / 2),
            ("PT90M", 5400),
            ("PT0.5H", 1800),
            ("PT1,5H", 5400),
            ("P0D", 0),
        ] {
            assert_eq!(upper_bound(text), Some(Duration::from_secs(secs)), "{text}");
        }
    }

    #[test]
    fn what_has_no_bound_is_none() {
        for text in [
            "",
            "P",
            "PT",
            "1D",
            "-P1D",
            "P-1D",
            "P1DT",
            "PT1D",
            "P1H",
            "P1D1Y",
            "P1D1D",
            "P0001-02-03",
            "P1.2.3D",
            "PD",
            "p1d",
            "P1 D",
            "P1e9D",
            "P1DT1H1M1S1H",
        ] {
            assert_eq!(upper_bound(text), None, "{text:?}");
        }
        assert_eq!(upper_bound(&format!("P{}D", "9".repeat(400))), None);
        assert!(upper_bound("P99999999999999999999Y").is_some_and(|d| d.as_secs() > 1 << 40));
    }
}
