//! RFC 3339 timestamps for export: formatting entry times and parsing the
//! `since` of `cellgate audit export`.

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Parses an RFC 3339 date-time (`2026-03-01T12:00:00Z`,
/// `2026-03-01T12:00:00.250+02:00`; `t`, `z` and a space separator are
/// accepted too) or a bare full date (`2026-03-01`, meaning its midnight
/// UTC) into milliseconds since the epoch. Fractions beyond milliseconds
/// are truncated.
pub fn parse_rfc3339(input: &str) -> Result<i64, String> {
    let s = input.trim();
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>, what: &str| -> Result<i64, String> {
        let part = b
            .get(range)
            .filter(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| format!("expected the {what} as digits"))?;
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |i: usize, c: u8| -> Result<(), String> {
        if b.get(i) == Some(&c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at position {}", c as char, i + 1))
        }
    };

    let year = digits(0..4, "year (4 digits)")?;
    expect(4, b'-')?;
    let month = digits(5..7, "month")?;
    expect(7, b'-')?;
    let day = digits(8..10, "day")?;
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 01-12"));
    }
    let max_day = days_in_month(year, month);
    if !(1..=max_day).contains(&day) {
        return Err(format!("day {day} is not 01-{max_day:02} for that month"));
    }
    let date_ms = days_from_civil(year, month, day) * 86_400_000;
    if b.len() == 10 {
        return Ok(date_ms);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return Err("expected `T` between date and time".into());
    }
    let hour = digits(11..13, "hour")?;
    expect(13, b':')?;
    let minute = digits(14..16, "minute")?;
    expect(16, b':')?;
    let second = digits(17..19, "second")?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!(
            "time {hour:02}:{minute:02}:{second:02} is out of range"
        ));
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err("expected digits after the decimal point".into());
        }
        let frac = &b[start..end.min(start + 3)];
        millis = frac.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
            * 10i64.pow(3 - frac.len() as u32);
        i = end;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = digits(i + 1..i + 3, "offset hours")?;
            expect(i + 3, b':')?;
            let om = digits(i + 4..i + 6, "offset minutes")?;
            if oh > 23 || om > 59 {
                return Err("offset out of range".into());
            }
            let total = oh * 60 + om;
            if *sign == b'-' { -total } else { total }
        }
        _ => return Err("expected a time zone: `Z` or `+HH:MM` / `-HH:MM`".into()),
    };
    Ok(date_ms + ((hour * 60 + minute - offset_min) * 60 + second) * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ms in [
            0,
            1,
            951_782_400_000,
            1_700_000_000_123,
            4_102_444_800_000,
            -86_400_001,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20.123456+02:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14t17:13:20-05:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14 22:13:20.5z"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(parse_rfc3339("1970-01-02"), Ok(86_400_000));
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in [
            "",
            "2023",
            "2023-13-01",
            "2023-02-29",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14X22:13:20Z",
            "yesterday",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
    }
}
