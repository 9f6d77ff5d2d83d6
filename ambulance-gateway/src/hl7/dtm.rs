//! HL7 date/time (`DTM`, and the first component of `TS`):
//! `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`, to and from microseconds since the Unix epoch.

/// A parsed date/time: the wall-clock time as written and its UTC offset, if written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dtm {
    /// The wall-clock time read as if it were UTC, µs since the epoch.
    wall_us: i64,
    /// The written offset from UTC in minutes (`+0200` is 120).
    pub(crate) offset_minutes: Option<i32>,
}

impl Dtm {
    /// The instant, µs since the epoch, using the written offset or else `default_offset`;
    /// `None` when neither is known.
    pub(crate) fn utc_us(&self, default_offset: Option<i32>) -> Option<i64> {
        let offset = self.offset_minutes.or(default_offset)?;
        Some(self.wall_us - i64::from(offset) * 60_000_000)
    }
}

/// Parses a date/time. Fractions of a second may have up to 6 digits (HL7 allows 4) and
/// need all of year to second; months, days, hours, minutes, seconds and the offset are
/// range-checked. `None` when malformed.
pub(crate) fn parse(text: &str) -> Option<Dtm> {
    let b = text.as_bytes();
    let (stamp, offset) = match b.iter().rposition(|&c| c == b'+' || c == b'-') {
        Some(i) => (&b[..i], Some(&b[i..])),
        None => (b, None),
    };
    let (digits, fraction) = match stamp.iter().position(|&c| c == b'.') {
        Some(i) => (&stamp[..i], Some(&stamp[i + 1..])),
        None => (stamp, None),
    };
    if !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14) || !all_digits(digits) {
        return None;
    }
    let part = |i: usize, default: i64| digits.get(i..i + 2).map_or(Some(default), number);
    let year = number(&digits[..4])?;
    let (month, day) = (part(4, 1)?, part(6, 1)?);
    let (hour, minute, second) = (part(8, 0)?, part(10, 0)?, part(12, 0)?);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let mut micros = 0;
    if let Some(f) = fraction {
        if digits.len() != 14 || f.is_empty() || f.len() > 6 || !all_digits(f) {
            return None;
        }
        micros = number(f)? * 10_i64.pow(6 - f.len() as u32);
    }
    let offset_minutes = match offset {
        None => None,
        Some(o) => {
            let &[sign, h1, h2, m1, m2] = o else {
                return None;
            };
            let (h, m) = (number(&[h1, h2])?, number(&[m1, m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = (h * 60 + m) as i32;
            Some(if sign == b'-' { -minutes } else { minutes })
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(Dtm {
        wall_us: seconds * 1_000_000 + micros,
        offset_minutes,
    })
}

/// Formats an instant as a UTC date/time with 4 fractional digits, e.g.
/// `20250612073319.1230+0000`; instants outside years 1970–9999 are clamped to them.
pub(crate) fn format_utc(us: i64) -> String {
    const MAX_US: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let us = us.clamp(0, MAX_US);
    let seconds = us / 1_000_000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}.{:04}+0000",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        us % 1_000_000 / 100
    )
}

fn all_digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

fn number(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Option<i64> {
        parse(text)?.utc_us(None)
    }

    #[test]
    fn hl7_dtm_parses_known_instants() {
        assert_eq!(utc("19700101000000+0000"), Some(0));
        assert_eq!(utc("20000101000000+0000"), Some(946_684_800_000_000));
        // 2025-06-12T07:33:19.123Z
        assert_eq!(utc("20250612093319.123+0200"), Some(1_749_713_599_123_000));
        assert_eq!(utc("20250612023319.123-0500"), Some(1_749_713_599_123_000));
        assert_eq!(
            utc("20240229235959.999999+0000"),
            Some(1_709_251_199_999_999)
        );
        assert_eq!(utc("2025+0000"), Some(1_735_689_600_000_000));
        assert_eq!(utc("202506+0000"), Some(1_748_736_000_000_000));
        assert_eq!(utc("1969123123+0000"), Some(-3_600_000_000));
    }

    #[test]
    fn hl7_dtm_without_offset_needs_a_default() {
        let t = parse("20250612093319").expect("parses");
        assert_eq!(t.offset_minutes, None);
        assert_eq!(t.utc_us(None), None);
        assert_eq!(t.utc_us(Some(120)), Some(1_749_713_599_000_000));
        let t = parse("20250612093319+0530").expect("parses");
        assert_eq!(t.utc_us(Some(120)), t.utc_us(None), "a written offset wins");
    }

    #[test]
    fn hl7_dtm_rejects_malformed() {
        for text in [
            "",
            "20",
            "20250",
            "2025061209331",
            "202506120933190",
            "2025-06-12",
            "20251312",
            "20250230",
            "20230229",
            "2025061224",
            "202506122360",
            "20250612235960",
            "20250612.5",
            "20250612093319.",
            "20250612093319.1234567",
            "20250612093319+02",
            "20250612093319+2400",
            "20250612093319+0260",
            "20250612093319+02000",
            "abcd",
            "２０２５",
            "20250612093319.12a",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn hl7_dtm_formats_and_round_trips() {
        assert_eq!(format_utc(0), "19700101000000.0000+0000");
        assert_eq!(
            format_utc(1_749_713_599_123_456),
            "20250612073319.1234+0000"
        );
        assert_eq!(format_utc(-5), "19700101000000.0000+0000");
        assert_eq!(format_utc(i64::MAX), "99991231235959.9999+0000");
        for us in [
            0,
            951_782_400_000_000,
            1_709_251_199_999_900,
            4_102_444_800_000_000,
        ] {
            assert_eq!(utc(&format_utc(us)), Some(us));
        }
        for days in [-719_468, -1, 0, 59, 60, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
