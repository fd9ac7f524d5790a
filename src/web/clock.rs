//! Times as the UI shows them: in the tenant's time zone, with a relative hint.
//!
//! A [`Clock`] is made once per request from the signed-in user's tenant (its zone is read with
//! the user in `require_login`) and travels in [`super::Chrome`]. Every template prints a time
//! the same way, `{{ chrome.clock.at(x) }}`, which renders
//!
//! ```html
//! <span class="when"><time datetime="2026-11-23T13:05:00Z">2026-11-23 14:05 CET</time> <span class="ago">(3 min ago)</span></span>
//! ```
//!
//! `at_seconds` is the same with seconds (pages where seconds matter: the audit log, cursors,
//! attempts), `date` a local day only. Dates typed into filters are days in the same zone:
//! [`Clock::day_start`] and [`Clock::day_end`].

use std::fmt;

use askama::filters::{Escaper, Html, HtmlSafe};
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::Error;
use crate::tenancy::login::CurrentUser;

/// A point in time, however many references deep (templates pass `&&DateTime`).
pub trait Moment {
    fn moment(&self) -> DateTime<Utc>;
}

impl Moment for DateTime<Utc> {
    fn moment(&self) -> DateTime<Utc> {
        *self
    }
}

impl<T: Moment + ?Sized> Moment for &T {
    fn moment(&self) -> DateTime<Utc> {
        (**self).moment()
    }
}

const MINUTES: &str = "%Y-%m-%d %H:%M %Z";
const SECONDS: &str = "%Y-%m-%d %H:%M:%S %Z";
const DAY: &str = "%Y-%m-%d";

/// The tenant's zone and the moment the page is rendered at.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    zone: Tz,
    now: DateTime<Utc>,
}

impl Clock {
    pub fn new(zone: Tz, now: DateTime<Utc>) -> Clock {
        Clock { zone, now }
    }

    /// The clock of a signed-in request: its tenant's zone, now.
    pub fn for_user(user: &CurrentUser) -> Clock {
        Clock::new(user.time_zone, Utc::now())
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The IANA name of the zone, e.g. `Europe/Berlin`.
    pub fn zone_name(&self) -> &'static str {
        self.zone.name()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// A time to the minute with its relative hint, as HTML.
    pub fn at(&self, at: impl Moment) -> Stamp {
        self.stamp(at, Precision::Minute)
    }

    /// A time to the second with its relative hint, as HTML.
    pub fn at_seconds(&self, at: impl Moment) -> Stamp {
        self.stamp(at, Precision::Second)
    }

    /// The local day only (the full local time in its `title`), as HTML.
    pub fn date(&self, at: impl Moment) -> Stamp {
        self.stamp(at, Precision::Day)
    }

    /// "2026-11-23 14:05 CET" as plain text, for strings built in Rust (chart titles).
    pub fn absolute(&self, at: impl Moment) -> String {
        at.moment()
            .with_timezone(&self.zone)
            .format(MINUTES)
            .to_string()
    }

    /// A time of day in the zone, "14:05 CET".
    pub fn time_of_day(&self, at: impl Moment) -> String {
        at.moment()
            .with_timezone(&self.zone)
            .format("%H:%M %Z")
            .to_string()
    }

    /// The relative hint alone: "3 min ago", "in 2 h", "just now".
    pub fn ago(&self, at: impl Moment) -> String {
        relative(at.moment(), self.now)
    }

    /// The first instant of `day` in the zone (local midnight, or the first minute that exists
    /// where a DST change skips midnight).
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        start_of_day(day, self.zone)
    }

    /// The first instant after `day` in the zone: `day` is `[day_start, day_end)`.
    pub fn day_end(&self, day: NaiveDate) -> DateTime<Utc> {
        day.succ_opt().map_or(DateTime::<Utc>::MAX_UTC, |next| {
            start_of_day(next, self.zone)
        })
    }

    fn stamp(&self, at: impl Moment, precision: Precision) -> Stamp {
        Stamp {
            at: at.moment(),
            zone: self.zone,
            now: self.now,
            precision,
        }
    }
}

fn start_of_day(day: NaiveDate, zone: Tz) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    // Where clocks jump forward at midnight (e.g. America/Havana, America/Santiago in some
    // years) the day begins at the first local minute that exists.
    (0..=24 * 60)
        .filter_map(|minute| midnight.checked_add_signed(Duration::minutes(minute)))
        .find_map(|local| zone.from_local_datetime(&local).earliest())
        .map_or_else(|| midnight.and_utc(), |start| start.with_timezone(&Utc))
}

/// A day typed into a filter (`YYYY-MM-DD`, as `<input type="date">` sends it); empty is none.
pub fn parse_day(text: &str, field: &str) -> Result<Option<NaiveDate>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(text, DAY)
        .ok()
        .filter(|day| (1..=9999).contains(&day.year()))
        .map(Some)
        .ok_or_else(|| Error::BadRequest(format!("{field} must be a date like 2026-01-31.")))
}

/// "3 min ago", "in 2 h", "just now": how far `at` is from `now`, roughly.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let (future, span) = (seconds > 0, seconds.unsigned_abs());
    let amount = match span {
        0..10 => return "just now".into(),
        10..60 => format!("{span} s"),
        60..3_600 => format!("{} min", span / 60),
        3_600..86_400 => format!("{} h", span / 3_600),
        86_400..172_800 => "1 day".into(),
        _ => format!("{} days", span / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    Minute,
    Second,
    Day,
}

/// A time rendered as HTML by its `Display`; askama prints it unescaped ([`HtmlSafe`]) because
/// everything variable in it is escaped here.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    at: DateTime<Utc>,
    zone: Tz,
    now: DateTime<Utc>,
    precision: Precision,
}

impl HtmlSafe for Stamp {}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.at.with_timezone(&self.zone);
        let iso = self.at.format("%Y-%m-%dT%H:%M:%SZ");
        match self.precision {
            Precision::Day => {
                write!(f, "<time datetime=\"{iso}\" title=\"")?;
                escaped(f, &local.format(MINUTES).to_string())?;
                f.write_str("\">")?;
                escaped(f, &local.format(DAY).to_string())?;
                f.write_str("</time>")
            }
            Precision::Minute | Precision::Second => {
                let pattern = if self.precision == Precision::Second {
                    SECONDS
                } else {
                    MINUTES
                };
                write!(f, "<span class=\"when\"><time datetime=\"{iso}\">")?;
                escaped(f, &local.format(pattern).to_string())?;
                f.write_str("</time> <span class=\"ago\">(")?;
                escaped(f, &relative(self.at, self.now))?;
                f.write_str(")</span></span>")
            }
        }
    }
}

/// Zone abbreviations are letters, digits and signs, but nothing reaches the page unescaped.
fn escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    Html.write_escaped_str(f, text)
}

#[cfg(test)]
mod tests {
    use askama::Template;
    use chrono::Duration;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a valid test time")
            .with_timezone(&Utc)
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, DAY).expect("a valid test day")
    }

    fn berlin(now: &str) -> Clock {
        Clock::new(chrono_tz::Europe::Berlin, utc(now))
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = utc("2026-11-23T12:00:00Z");
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - Duration::seconds(9), now), "just now");
        assert_eq!(relative(now + Duration::seconds(5), now), "just now");
        assert_eq!(relative(now - Duration::seconds(30), now), "30 s ago");
        assert_eq!(relative(now - Duration::seconds(90), now), "1 min ago");
        assert_eq!(relative(now - Duration::minutes(3), now), "3 min ago");
        assert_eq!(
            relative(now + Duration::minutes(2) + Duration::seconds(5), now),
            "in 2 min"
        );
        assert_eq!(relative(now - Duration::hours(5), now), "5 h ago");
        assert_eq!(relative(now + Duration::hours(2), now), "in 2 h");
        assert_eq!(relative(now - Duration::hours(30), now), "1 day ago");
        assert_eq!(relative(now - Duration::days(3), now), "3 days ago");
        assert_eq!(relative(now + Duration::days(9), now), "in 9 days");
    }

    #[test]
    fn a_stamp_shows_local_time_with_abbreviation_utc_markup_and_hint() {
        let clock = berlin("2026-11-23T13:08:00Z");
        let html = clock.at(utc("2026-11-23T13:05:30Z")).to_string();
        assert_eq!(
            html,
            "<span class=\"when\"><time datetime=\"2026-11-23T13:05:30Z\">2026-11-23 14:05 CET</time> <span class=\"ago\">(2 min ago)</span></span>"
        );
        let html = clock.at_seconds(utc("2026-11-23T13:05:30Z")).to_string();
        assert!(html.contains(">2026-11-23 14:05:30 CET</time>"), "{html}");
        assert_eq!(
            clock.absolute(utc("2026-11-23T13:05:30Z")),
            "2026-11-23 14:05 CET"
        );
        assert_eq!(clock.time_of_day(utc("2026-11-23T13:00:00Z")), "14:00 CET");
        assert_eq!(clock.ago(utc("2026-11-23T13:10:00Z")), "in 2 min");
    }

    #[test]
    fn summer_time_changes_the_offset_and_the_abbreviation() {
        let clock = berlin("2026-07-01T00:00:00Z");
        assert_eq!(
            clock.absolute(utc("2026-07-01T10:00:00Z")),
            "2026-07-01 12:00 CEST"
        );
        // The night clocks go back (2026-10-25): 02:30 happens twice, told apart by the zone.
        assert_eq!(
            clock.absolute(utc("2026-10-25T00:30:00Z")),
            "2026-10-25 02:30 CEST"
        );
        assert_eq!(
            clock.absolute(utc("2026-10-25T01:30:00Z")),
            "2026-10-25 02:30 CET"
        );
        let tokyo = Clock::new(chrono_tz::Asia::Tokyo, utc("2026-07-01T00:00:00Z"));
        assert_eq!(
            tokyo.absolute(utc("2026-06-30T20:00:00Z")),
            "2026-07-01 05:00 JST"
        );
        let utc_clock = Clock::new(Tz::UTC, utc("2026-07-01T00:00:00Z"));
        assert_eq!(
            utc_clock.absolute(utc("2026-06-30T20:00:00Z")),
            "2026-06-30 20:00 UTC"
        );
    }

    #[test]
    fn a_date_is_the_local_day() {
        let tokyo = Clock::new(chrono_tz::Asia::Tokyo, utc("2026-07-01T00:00:00Z"));
        // 20:00 UTC on the 30th is already the 1st in Tokyo.
        let html = tokyo.date(utc("2026-06-30T20:00:00Z")).to_string();
        assert_eq!(
            html,
            "<time datetime=\"2026-06-30T20:00:00Z\" title=\"2026-07-01 05:00 JST\">2026-07-01</time>"
        );
    }

    #[test]
    fn templates_print_a_stamp_as_markup_not_as_escaped_text() {
        #[derive(Template)]
        #[template(source = "<p>{{ clock.at(at) }}</p>", ext = "html")]
        struct Page {
            clock: Clock,
            at: DateTime<Utc>,
        }
        let page = Page {
            clock: berlin("2026-11-23T13:05:00Z"),
            at: utc("2026-11-23T13:05:00Z"),
        };
        let html = page.render().expect("renders");
        assert!(
            html.starts_with("<p><span class=\"when\"><time datetime=\"2026-11-23T13:05:00Z\">"),
            "{html}"
        );
        assert!(html.contains("(just now)"));
    }

    #[test]
    fn a_day_runs_from_local_midnight_to_local_midnight() {
        let clock = berlin("2026-11-23T00:00:00Z");
        assert_eq!(
            clock.day_start(day("2026-11-23")),
            utc("2026-11-22T23:00:00Z")
        );
        assert_eq!(
            clock.day_end(day("2026-11-23")),
            utc("2026-11-23T23:00:00Z")
        );
        let tokyo = Clock::new(chrono_tz::Asia::Tokyo, utc("2026-11-23T00:00:00Z"));
        assert_eq!(
            tokyo.day_start(day("2026-11-23")),
            utc("2026-11-22T15:00:00Z")
        );
        let utc_clock = Clock::new(Tz::UTC, utc("2026-11-23T00:00:00Z"));
        assert_eq!(
            utc_clock.day_start(day("2026-11-23")),
            utc("2026-11-23T00:00:00Z")
        );
        assert_eq!(
            utc_clock.day_end(day("2026-11-23")),
            utc("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn days_with_a_dst_change_are_23_or_25_hours_long() {
        let clock = berlin("2026-01-01T00:00:00Z");
        // Spring forward on 2026-03-29: from +01:00 at midnight to +02:00 at the next.
        let start = clock.day_start(day("2026-03-29"));
        let end = clock.day_end(day("2026-03-29"));
        assert_eq!(start, utc("2026-03-28T23:00:00Z"));
        assert_eq!(end, utc("2026-03-29T22:00:00Z"));
        assert_eq!(end - start, Duration::hours(23));
        // Fall back on 2026-10-25.
        let start = clock.day_start(day("2026-10-25"));
        let end = clock.day_end(day("2026-10-25"));
        assert_eq!(start, utc("2026-10-24T22:00:00Z"));
        assert_eq!(end - start, Duration::hours(25));
        // New York springs forward on 2026-03-08.
        let new_york = Clock::new(chrono_tz::America::New_York, utc("2026-01-01T00:00:00Z"));
        assert_eq!(
            new_york.day_start(day("2026-03-08")),
            utc("2026-03-08T05:00:00Z")
        );
        assert_eq!(
            new_york.day_end(day("2026-03-08")),
            utc("2026-03-09T04:00:00Z")
        );
    }

    #[test]
    fn a_day_that_skips_midnight_starts_at_the_first_minute_that_exists() {
        // Havana moved its clocks from 00:00 to 01:00 on 2026-03-08 (second Sunday of March).
        let havana = Clock::new(chrono_tz::America::Havana, utc("2026-01-01T00:00:00Z"));
        let start = havana.day_start(day("2026-03-08"));
        assert_eq!(start, utc("2026-03-08T05:00:00Z"));
        assert_eq!(
            start
                .with_timezone(&chrono_tz::America::Havana)
                .format("%H:%M")
                .to_string(),
            "01:00"
        );
    }

    #[test]
    fn filter_days_are_parsed_strictly() {
        assert_eq!(parse_day(" ", "From").expect("empty is fine"), None);
        assert_eq!(
            parse_day("2026-03-29", "From").expect("a day"),
            Some(day("2026-03-29"))
        );
        assert!(parse_day("29.03.2026", "From").is_err());
        assert!(parse_day("2026-02-30", "From").is_err());
        assert!(parse_day("+12026-01-01", "From").is_err());
    }

    #[test]
    fn the_last_day_there_is_still_ends() {
        let clock = berlin("2026-01-01T00:00:00Z");
        assert_eq!(clock.day_end(NaiveDate::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
