//! Chat addresses (docs/PROTOCOL.md, "Addresses"): `user[.integrator][:device]@server`, where
//! `user` is the gatekeeper-internal account id, `integrator` the provider's integrator id
//! (absent for native accounts) and `device` the device number (absent: the whole account).
//!
//! Account ids never contain `.`, `:` or `@`, so the text form parses unambiguously. The
//! gatekeeper routes on the account and device; the integrator part it writes, and on input
//! ignores (an account id alone names the account).

use crate::store::DeviceAddress;

/// The server part of account and device addresses.
pub const SERVER: &str = "s.interop";

/// A parsed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jid {
    /// Gatekeeper-internal account id.
    pub account: String,
    /// Provider integrator id (interop accounts).
    pub integrator: Option<String>,
    /// Device number, when the address names one device.
    pub device: Option<u32>,
}

impl Jid {
    /// Parses the text form; `None` for anything that is not an account or device address of
    /// this server.
    pub fn parse(text: &str) -> Option<Self> {
        let (local, server) = text.rsplit_once('@')?;
        if server != SERVER || local.is_empty() {
            return None;
        }
        let (rest, device) = match local.rsplit_once(':') {
            Some((rest, d)) => (rest, Some(parse_decimal(d)?)),
            None => (local, None),
        };
        let (account, integrator) = match rest.split_once('.') {
            Some((a, i)) if !i.is_empty() => (a, Some(i.to_owned())),
            Some(_) => return None,
            None => (rest, None),
        };
        if account.is_empty() || account.contains([':', '@']) {
            return None;
        }
        Some(Self { account: account.to_owned(), integrator, device })
    }

    /// The address of one device.
    pub fn device(device: &DeviceAddress, integrator: Option<&str>) -> Self {
        Self {
            account: device.account.clone(),
            integrator: integrator.map(str::to_owned),
            device: Some(device.device),
        }
    }

    /// The device this address names, if it names one.
    pub fn device_address(&self) -> Option<DeviceAddress> {
        Some(DeviceAddress { account: self.account.clone(), device: self.device? })
    }
}

impl std::fmt::Display for Jid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.account)?;
        if let Some(i) = &self.integrator {
            write!(f, ".{i}")?;
        }
        if let Some(d) = self.device {
            write!(f, ":{d}")?;
        }
        write!(f, "@{SERVER}")
    }
}

/// Decimal in shortest form, as the stanza codec requires.
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for text in [
            "2001@s.interop",
            "2001:3@s.interop",
            "1042.acme:2@s.interop",
            "ab12.7@s.interop",
            "a:0@s.interop",
        ] {
            let jid = Jid::parse(text).unwrap();
            assert_eq!(jid.to_string(), text);
        }
        let j = Jid::parse("1042.acme:2@s.interop").unwrap();
        assert_eq!(
            (j.account.as_str(), j.integrator.as_deref(), j.device),
            ("1042", Some("acme"), Some(2))
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "@s.interop",
            "2001",
            "2001@g.interop",
            "2001:x@s.interop",
            "2001:01@s.interop",
            "2001:@s.interop",
            "2001.@s.interop",
            ":3@s.interop",
            "a@b@s.interop",
            "2001:99999999999@s.interop",
        ] {
            assert_eq!(Jid::parse(bad), None, "{bad:?}");
        }
    }
}
