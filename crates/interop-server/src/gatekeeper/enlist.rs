//! The enlistment and registration iqs (docs/PROTOCOL.md 3.6): `enlist`, `status`, `opt-out`
//! for interop sessions; `register`, `confirm`, `interop` for native ones.

use interop_enlist::enlist::PendingCode;
use interop_enlist::enlist::{Address, Consent, ErrorCode, KeyBundle, Request, Response, Status};
use interop_stanza::Node;
use rand::SeedableRng;

use super::conn::Auth;
use super::{GatekeeperStore, MAX_PENDING_CODES, Shared, now_ms, unix_now};
use crate::store::{
    AccountKind, DeviceAddress, Identity, NewDevice, PrekeyUpload, SignedPrekey, UploadedPrekey,
};

/// What an enlistment iq changed about the connection.
pub(super) enum Change {
    /// The connection is now this device (start or switch its chat session).
    Enlisted(DeviceAddress),
    /// The account is gone: end every session of it.
    OptedOut(String),
}

fn signed(k: &interop_enlist::enlist::SignedPrekey) -> SignedPrekey {
    SignedPrekey { id: k.id, public: k.public.clone(), signature: k.signature.clone() }
}

fn new_device(key: [u8; 32], keys: &KeyBundle, push_token: Option<String>) -> NewDevice {
    NewDevice {
        noise_key: key,
        registration_id: keys.registration_id,
        identity_key: keys.identity_key.clone(),
        push_token,
        prekeys: PrekeyUpload {
            signed: Some(signed(&keys.signed_prekey)),
            kyber_last_resort: Some(signed(&keys.kyber_prekey)),
            kyber_one_time: Vec::new(),
            one_time: keys
                .prekeys
                .iter()
                .map(|k| UploadedPrekey { id: k.id, public: k.public.clone() })
                .collect(),
        },
    }
}

fn address(device: &DeviceAddress, integrator: Option<&str>) -> Address {
    Address {
        account: device.account.clone(),
        device: device.device,
        integrator: integrator.filter(|i| !i.is_empty()).map(str::to_owned),
    }
}

/// Answers one enlistment iq.
pub(super) async fn handle<S: GatekeeperStore>(
    shared: &Shared<S>,
    auth: &mut Auth,
    node: &Node,
) -> crate::Result<(Node, Option<Change>)> {
    let (id, request) = match Request::from_node(node) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                interop_enlist::Error::BadRequest(code) => code,
                _ => ErrorCode::BadRequest,
            };
            let id = interop_enlist::enlist::iq_id(node).unwrap_or_default().to_owned();
            return Ok((Response::Error(code).to_node(&id), None));
        }
    };
    let (response, change) = match answer(shared, auth, request).await {
        Ok(r) => r,
        Err(code) => (Response::Error(code), None),
    };
    Ok((response.to_node(&id), change))
}

type Answer = Result<(Response, Option<Change>), ErrorCode>;

async fn answer<S: GatekeeperStore>(
    shared: &Shared<S>,
    auth: &mut Auth,
    request: Request,
) -> Answer {
    let internal = |e: crate::Error| {
        tracing::warn!(error = %e, "enlistment failed");
        ErrorCode::InternalError
    };
    let store = &*shared.store;
    match request {
        Request::Enlist { keys, consent, push_token } => {
            let Some(identity) = auth.identity.clone() else {
                return Err(ErrorCode::NotAuthorized);
            };
            let record =
                shared.providers.read().expect("providers lock").get(&identity.issuer).cloned();
            let Some(record) = record.filter(|r| r.entry.enabled) else {
                return Err(ErrorCode::ProviderDisabled);
            };
            let push_token =
                String::from_utf8(push_token).map_err(|_| ErrorCode::InvalidPushToken)?;
            let account = store.account_of(&identity).await.map_err(internal)?;
            let known_device = auth.device.is_some();
            if let Some(account) = &account
                && !known_device
            {
                let devices = store.devices(account).await.map_err(internal)?;
                if devices.len() >= record.entry.quotas.max_devices_per_account as usize {
                    return Err(ErrorCode::DeviceLimit);
                }
            }
            if account.is_none()
                && !take_enlistment(
                    shared,
                    &identity.issuer,
                    record.entry.quotas.enlistments_per_hour,
                )
            {
                return Err(ErrorCode::RateLimited);
            }
            let enlisted = store
                .enlist(&identity, new_device(auth.key, &keys, Some(push_token)), now_ms())
                .await
                .map_err(internal)?;
            store
                .set_consent(&enlisted.address.account, &consent.version, consent.read_receipts)
                .await
                .map_err(internal)?;
            metrics::counter!("interop_enlistments_total", "new" => if enlisted.new_account { "account" } else if enlisted.new_device { "device" } else { "repeat" }).increment(1);
            auth.device = Some(enlisted.address.clone());
            let response = Response::Enlisted {
                address: address(&enlisted.address, Some(&identity.integrator)),
                created: enlisted.new_account,
            };
            Ok((response, Some(Change::Enlisted(enlisted.address))))
        }
        Request::Status => {
            let Some(device) = &auth.device else {
                return Ok((Response::Status(Status::NotEnlisted), None));
            };
            let integrator = auth.identity.as_ref().map(|i| i.integrator.as_str());
            let (version, read_receipts) = store
                .consent(&device.account)
                .await
                .map_err(internal)?
                .unwrap_or_else(|| (String::new(), auth.read_receipts));
            let status = Status::Enlisted {
                address: address(device, integrator),
                consent: Consent { version, read_receipts },
            };
            Ok((Response::Status(status), None))
        }
        Request::OptOut => {
            if auth.kind != AccountKind::Interop {
                return Err(ErrorCode::NotAuthorized);
            }
            let Some(device) = auth.device.take() else { return Err(ErrorCode::NotEnlisted) };
            store.delete_account(&device.account).await.map_err(internal)?;
            metrics::counter!("interop_opt_outs_total").increment(1);
            Ok((Response::OptedOut, Some(Change::OptedOut(device.account))))
        }
        Request::Register { identifier } => {
            if auth.kind != AccountKind::Native {
                return Err(ErrorCode::NotAuthorized);
            }
            if !interop_enlist::valid_subject(&identifier) {
                return Err(ErrorCode::InvalidIdentifier);
            }
            if !shared.register_limit.check(&identifier, now_ms()) {
                return Err(ErrorCode::RateLimited);
            }
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let code = PendingCode::generate(&mut rng, unix_now());
            let expires_in = code.expires_in(unix_now());
            if let Some(sink) = &shared.config.code_sink {
                sink(&identifier, code.code());
            } else if shared.config.dev {
                // Development mode stands in for the SMS gateway; never in production.
                println!("verification-code {identifier} {}", code.code());
            } else {
                tracing::warn!(
                    "no verification-code sender is configured; run in dev mode to print codes"
                );
            }
            {
                let mut codes = shared.codes.lock().expect("codes lock");
                if codes.len() >= MAX_PENDING_CODES && !codes.contains_key(&identifier) {
                    let now = unix_now();
                    codes.retain(|_, c| c.expires_in(now) > 0);
                    if codes.len() >= MAX_PENDING_CODES {
                        return Err(ErrorCode::RateLimited);
                    }
                }
                codes.insert(identifier, code);
            }
            Ok((Response::CodeSent { expires_in }, None))
        }
        Request::Confirm { identifier, code, keys } => {
            if auth.kind != AccountKind::Native {
                return Err(ErrorCode::NotAuthorized);
            }
            {
                let mut codes = shared.codes.lock().expect("codes lock");
                let Some(pending) = codes.get_mut(&identifier) else {
                    return Err(ErrorCode::CodeExpired);
                };
                let checked = pending.check(&code, unix_now());
                if !matches!(checked, Err(ErrorCode::InvalidCode)) {
                    // Used, expired or out of tries: gone either way.
                    codes.remove(&identifier);
                }
                checked?;
            }
            let identity = Identity {
                kind: AccountKind::Native,
                issuer: String::new(),
                subject: identifier,
                integrator: String::new(),
            };
            let enlisted = store
                .enlist(&identity, new_device(auth.key, &keys, None), now_ms())
                .await
                .map_err(internal)?;
            metrics::counter!("interop_registrations_total").increment(1);
            auth.device = Some(enlisted.address.clone());
            let response = Response::Registered { address: address(&enlisted.address, None) };
            Ok((response, Some(Change::Enlisted(enlisted.address))))
        }
        Request::InteropOptIn { enabled } => {
            if auth.kind != AccountKind::Native {
                return Err(ErrorCode::NotAuthorized);
            }
            let Some(device) = &auth.device else { return Err(ErrorCode::NotEnlisted) };
            store.set_opt_in(&device.account, enabled).await.map_err(internal)?;
            Ok((Response::InteropOptIn { enabled }, None))
        }
        _ => Err(ErrorCode::BadRequest),
    }
}

/// Counts an enlistment against the provider's hourly quota; false when it is used up.
fn take_enlistment<S>(shared: &Shared<S>, issuer: &str, per_hour: u32) -> bool {
    let hour = now_ms() / 3_600_000;
    let mut counts = shared.enlistments.lock().expect("enlistment lock");
    let entry = counts.entry(issuer.to_owned()).or_insert((hour, 0));
    if entry.0 != hour {
        *entry = (hour, 0);
    }
    if entry.1 >= per_hour {
        return false;
    }
    entry.1 += 1;
    true
}
