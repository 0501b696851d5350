use std::str::FromStr;

use nix::sys::signal::Signal;

use super::{Error, Result};

/// Parses a signal as Docker accepts it: `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(text: &str) -> Result<i32> {
    let invalid = || Error::InvalidParameter(format!("Invalid signal: {text}"));
    if let Ok(number) = text.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
        return Err(invalid());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name).map(|signal| signal as i32).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_forms() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("int").unwrap(), 2);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
