//! Dutch wall-clock time. Hospital and care systems of the region store times without an
//! offset, in Dutch local time; FHIR wants the offset. CET (+01:00) or CEST (+02:00) follows the
//! EU rule: summer time from the last Sunday of March, 02:00 local, to the last Sunday of
//! October, 03:00 local (the repeated hour in October is taken as winter time: it is ambiguous).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Whether a local wall time falls in summer time.
pub fn summer_time(year: i32, month: u32, day: u32, hour: u32) -> bool {
    let last_sunday = |m: u32| 31 - weekday(year, m, 31);
    match month {
        4..=9 => true,
        3 => {
            let s = last_sunday(3);
            day > s || (day == s && hour >= 2)
        }
        10 => {
            let s = last_sunday(10);
            day < s || (day == s && hour < 2)
        }
        _ => false,
    }
}

/// The offset (`+01:00` or `+02:00`) of a local wall time.
pub fn offset_text(year: i32, month: u32, day: u32, hour: u32) -> &'static str {
    if summer_time(year, month, day, hour) {
        "+02:00"
    } else {
        "+01:00"
    }
}

/// A local wall time as an instant.
pub fn from_local(local: PrimitiveDateTime) -> OffsetDateTime {
    let hours = if summer_time(
        local.year(),
        u8::from(local.month()) as u32,
        local.day() as u32,
        local.hour() as u32,
    ) {
        2
    } else {
        1
    };
    local.assume_offset(UtcOffset::from_hms(hours, 0, 0).expect("a valid offset"))
}

/// An instant as Dutch wall time (what a database column without offset holds). EU summer
/// time starts and ends at 01:00 UTC on the last Sundays of March and October.
pub fn to_local(instant: OffsetDateTime) -> PrimitiveDateTime {
    let utc = instant.to_offset(UtcOffset::UTC);
    let (y, m, d, h) = (
        utc.year(),
        u8::from(utc.month()) as u32,
        utc.day() as u32,
        utc.hour() as u32,
    );
    let last_sunday = |m: u32| 31 - weekday(y, m, 31);
    let summer = match m {
        4..=9 => true,
        3 => d > last_sunday(3) || (d == last_sunday(3) && h >= 1),
        10 => d < last_sunday(10) || (d == last_sunday(10) && h < 1),
        _ => false,
    };
    let local = utc
        .to_offset(UtcOffset::from_hms(if summer { 2 } else { 1 }, 0, 0).expect("a valid offset"));
    PrimitiveDateTime::new(local.date(), local.time())
}

/// Day of the week, 0 = Sunday (Sakamoto).
fn weekday(y: i32, m: u32, d: u32) -> u32 {
    const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if m < 3 { y - 1 } else { y };
    ((y + y / 4 - y / 100 + y / 400 + T[(m - 1) as usize] + d as i32).rem_euclid(7)) as u32
}

/// The first day of `month` (for date-precision ranges).
pub fn first_of(year: i32, month: Month) -> Option<Date> {
    Date::from_calendar_date(year, month, 1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn summer_and_winter_time() {
        // 2024: summer time from 31 March 02:00 to 27 October 03:00.
        assert!(!summer_time(2024, 3, 31, 1));
        assert!(summer_time(2024, 3, 31, 3));
        assert!(summer_time(2024, 10, 27, 1));
        assert!(!summer_time(2024, 10, 27, 3));
        assert!(!summer_time(2024, 1, 15, 12));
        assert_eq!(offset_text(2024, 7, 1, 9), "+02:00");
    }

    #[test]
    fn local_and_back() {
        for local in [
            datetime!(2024-01-15 09:30:00),
            datetime!(2024-07-01 23:15:00),
            datetime!(2024-03-31 03:30:00),
            datetime!(2024-10-27 12:00:00),
        ] {
            assert_eq!(to_local(from_local(local)), local, "{local}");
        }
        assert_eq!(
            to_local(datetime!(2024-07-01 10:00:00 UTC)),
            datetime!(2024-07-01 12:00:00)
        );
        assert_eq!(
            to_local(datetime!(2024-01-01 10:00:00 UTC)),
            datetime!(2024-01-01 11:00:00)
        );
    }
}
