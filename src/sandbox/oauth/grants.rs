//! Consent requests, authorisation codes, access and refresh tokens, all in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::sandbox::model::{lock, now_ms};

/// Expired access tokens are remembered this long so a late call gets "expired", not "unknown".
const KEEP_EXPIRED_MS: i64 = 24 * 3600 * 1000;
const CONSENT_TTL: Duration = Duration::from_secs(30 * 60);

/// An authorisation request waiting on the consent page.
#[derive(Debug, Clone)]
pub struct Consent {
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub created: Instant,
}

struct Code {
    portal_id: u64,
    user_id: u64,
    redirect_uri: String,
    scopes: Arc<[String]>,
    challenge: Option<String>,
    expires: Instant,
    /// The refresh token a first exchange issued; a replay revokes it.
    used_by: Option<String>,
}

struct Access {
    portal_id: u64,
    user_id: u64,
    scopes: Arc<[String]>,
    expires_ms: i64,
    refresh: String,
    revoked: bool,
}

struct Refresh {
    portal_id: u64,
    user_id: u64,
    scopes: Arc<[String]>,
    revoked: bool,
}

/// Who a valid access token speaks for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub portal_id: u64,
    pub scopes: Arc<[String]>,
}

impl Grant {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A fresh token pair.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub portal_id: u64,
    pub user_id: u64,
    pub scopes: Arc<[String]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Unknown,
    Expired { ago_ms: i64 },
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("missing or unknown auth code")]
    BadCode,
    #[error("redirect_uri does not match the one of the authorization request")]
    BadRedirect,
    #[error("code_verifier does not match the code_challenge")]
    BadVerifier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

/// What introspection reports about an active token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub kind: TokenKind,
    pub portal_id: u64,
    pub user_id: u64,
    pub scopes: Arc<[String]>,
    /// Seconds left (access tokens only).
    pub expires_in: Option<i64>,
}

#[derive(Default)]
struct Inner {
    consents: HashMap<String, Consent>,
    codes: HashMap<String, Code>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
}

pub struct Grants {
    token_ttl: Duration,
    code_ttl: Duration,
    inner: Mutex<Inner>,
}

fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// The S256 transform of a PKCE verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Grants {
    pub fn new(token_ttl: Duration, code_ttl: Duration) -> Grants {
        Grants {
            token_ttl,
            code_ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    pub fn open_consent(&self, consent: Consent) -> String {
        let id = random_token(18);
        let mut inner = lock(&self.inner);
        inner
            .consents
            .retain(|_, c| c.created.elapsed() < CONSENT_TTL);
        inner.consents.insert(id.clone(), consent);
        id
    }

    pub fn consent(&self, id: &str) -> Option<Consent> {
        lock(&self.inner).consents.get(id).cloned()
    }

    pub fn take_consent(&self, id: &str) -> Option<Consent> {
        let mut inner = lock(&self.inner);
        let consent = inner.consents.remove(id)?;
        (consent.created.elapsed() < CONSENT_TTL).then_some(consent)
    }

    pub fn issue_code(&self, consent: &Consent, portal_id: u64, user_id: u64) -> String {
        let code = random_token(24);
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let keep = self.code_ttl * 2;
        inner.codes.retain(|_, c| c.expires + keep > now);
        inner.codes.insert(
            code.clone(),
            Code {
                portal_id,
                user_id,
                redirect_uri: consent.redirect_uri.clone(),
                scopes: consent.scopes.clone().into(),
                challenge: consent.code_challenge.clone(),
                expires: now + self.code_ttl,
                used_by: None,
            },
        );
        code
    }

    fn issue(
        &self,
        inner: &mut Inner,
        portal_id: u64,
        user_id: u64,
        scopes: Arc<[String]>,
        refresh: Option<String>,
    ) -> Issued {
        let now = now_ms();
        if inner.access.len() > 10_000 {
            inner
                .access
                .retain(|_, a| a.expires_ms + KEEP_EXPIRED_MS > now);
        }
        let refresh_token = refresh.unwrap_or_else(|| {
            let token = format!("na1-{}", random_token(27));
            inner.refresh.insert(
                token.clone(),
                Refresh {
                    portal_id,
                    user_id,
                    scopes: scopes.clone(),
                    revoked: false,
                },
            );
            token
        });
        let access_token = format!("C{}", random_token(48));
        let ttl_ms = i64::try_from(self.token_ttl.as_millis()).unwrap_or(i64::MAX);
        inner.access.insert(
            access_token.clone(),
            Access {
                portal_id,
                user_id,
                scopes: scopes.clone(),
                expires_ms: now.saturating_add(ttl_ms),
                refresh: refresh_token.clone(),
                revoked: false,
            },
        );
        Issued {
            access_token,
            refresh_token,
            expires_in: self.token_ttl.as_secs(),
            portal_id,
            user_id,
            scopes,
        }
    }

    /// Redeems an authorisation code (once). A replayed code also revokes what it first issued.
    pub fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<Issued, ExchangeError> {
        let mut inner = lock(&self.inner);
        let entry = inner.codes.get_mut(code).ok_or(ExchangeError::BadCode)?;
        if let Some(issued) = entry.used_by.clone() {
            Self::revoke_refresh(&mut inner, &issued);
            return Err(ExchangeError::BadCode);
        }
        if entry.expires <= Instant::now() {
            return Err(ExchangeError::BadCode);
        }
        if entry.redirect_uri != redirect_uri {
            return Err(ExchangeError::BadRedirect);
        }
        if let Some(challenge) = &entry.challenge {
            let ok = verifier.is_some_and(|v| {
                bool::from(pkce_challenge(v).as_bytes().ct_eq(challenge.as_bytes()))
            });
            if !ok {
                // A failed verifier burns the code too: it may have been intercepted.
                entry.used_by = Some(String::new());
                return Err(ExchangeError::BadVerifier);
            }
        }
        let (portal_id, user_id, scopes) = (entry.portal_id, entry.user_id, entry.scopes.clone());
        let issued = self.issue(&mut inner, portal_id, user_id, scopes, None);
        if let Some(entry) = inner.codes.get_mut(code) {
            entry.used_by = Some(issued.refresh_token.clone());
        }
        Ok(issued)
    }

    /// A new access token for a live refresh token (the refresh token stays the same).
    pub fn refresh(&self, refresh_token: &str) -> Option<Issued> {
        let mut inner = lock(&self.inner);
        let entry = inner.refresh.get(refresh_token).filter(|r| !r.revoked)?;
        let (portal_id, user_id, scopes) = (entry.portal_id, entry.user_id, entry.scopes.clone());
        Some(self.issue(
            &mut inner,
            portal_id,
            user_id,
            scopes,
            Some(refresh_token.to_string()),
        ))
    }

    pub fn authenticate(&self, token: &str) -> Result<Grant, AuthFailure> {
        let inner = lock(&self.inner);
        let access = inner.access.get(token).ok_or(AuthFailure::Unknown)?;
        if access.revoked {
            return Err(AuthFailure::Revoked);
        }
        let now = now_ms();
        if access.expires_ms <= now {
            return Err(AuthFailure::Expired {
                ago_ms: now - access.expires_ms,
            });
        }
        Ok(Grant {
            portal_id: access.portal_id,
            scopes: access.scopes.clone(),
        })
    }

    pub fn introspect(&self, token: &str) -> Option<TokenInfo> {
        let inner = lock(&self.inner);
        if let Some(a) = inner.access.get(token) {
            let left = (a.expires_ms - now_ms()) / 1000;
            return (!a.revoked && left > 0).then(|| TokenInfo {
                kind: TokenKind::Access,
                portal_id: a.portal_id,
                user_id: a.user_id,
                scopes: a.scopes.clone(),
                expires_in: Some(left),
            });
        }
        inner
            .refresh
            .get(token)
            .filter(|r| !r.revoked)
            .map(|r| TokenInfo {
                kind: TokenKind::Refresh,
                portal_id: r.portal_id,
                user_id: r.user_id,
                scopes: r.scopes.clone(),
                expires_in: None,
            })
    }

    fn revoke_refresh(inner: &mut Inner, refresh: &str) {
        if let Some(r) = inner.refresh.get_mut(refresh) {
            r.revoked = true;
        }
        for a in inner.access.values_mut().filter(|a| a.refresh == refresh) {
            a.revoked = true;
        }
    }

    /// Revokes an access token, or a refresh token with every access token it issued.
    pub fn revoke(&self, token: &str) -> bool {
        let mut inner = lock(&self.inner);
        if let Some(a) = inner.access.get_mut(token) {
            a.revoked = true;
            return true;
        }
        if inner.refresh.contains_key(token) {
            Self::revoke_refresh(&mut inner, token);
            return true;
        }
        false
    }

    /// Revokes every token (of one portal, or of all). Returns how many refresh tokens died.
    pub fn revoke_all(&self, portal: Option<u64>) -> usize {
        let mut inner = lock(&self.inner);
        let matches = |p: u64| portal.is_none_or(|want| want == p);
        let mut count = 0;
        for r in inner
            .refresh
            .values_mut()
            .filter(|r| matches(r.portal_id) && !r.revoked)
        {
            r.revoked = true;
            count += 1;
        }
        for a in inner.access.values_mut().filter(|a| matches(a.portal_id)) {
            a.revoked = true;
        }
        count
    }

    /// Makes every live access token (of one portal, or of all) expire now.
    pub fn expire_all(&self, portal: Option<u64>) -> usize {
        let mut inner = lock(&self.inner);
        let now = now_ms();
        let mut count = 0;
        for a in inner.access.values_mut() {
            if portal.is_none_or(|want| want == a.portal_id) && a.expires_ms > now {
                a.expires_ms = now - 1;
                count += 1;
            }
        }
        count
    }

    /// Access tokens issued for a portal so far, expired ones included (tests count refreshes).
    pub fn issued_access_tokens(&self, portal: u64) -> usize {
        lock(&self.inner)
            .access
            .values()
            .filter(|a| a.portal_id == portal)
            .count()
    }

    /// Live refresh tokens per portal (for the UI).
    pub fn live_refresh_tokens(&self, portal: u64) -> usize {
        lock(&self.inner)
            .refresh
            .values()
            .filter(|r| r.portal_id == portal && !r.revoked)
            .count()
    }
}
