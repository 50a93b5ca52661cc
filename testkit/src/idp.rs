//! A test OpenID Connect identity provider on loopback: its own RSA and EC keys, a discovery document and a JWKS
//! (counting fetches), minting tokens for every case the API must accept or refuse, and rotating keys on demand.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

pub const AUDIENCE: &str = "api://imagegen-tests";
pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";

enum Private {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Key {
    kid: String,
    private: Private,
    published: bool,
}

#[derive(Default)]
struct State {
    keys: Vec<Key>,
    jwks_fetches: u64,
}

pub struct TestIdp {
    pub issuer: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone, Copy)]
pub enum Kind {
    Rsa,
    Ec,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TestIdp {
    /// Serves discovery + JWKS on a free loopback port with one published RSA key (`rsa-1`) and one EC key (`ec-1`).
    pub async fn start() -> TestIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let app = {
            let discovery = json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/discovery/keys"),
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            let jwks_state = state.clone();
            // Entra's layout too, with this server as the authority host: `/<tenant>/v2.0/.well-known/...`; the
            // multi-tenant aliases' document names the issuer template, as Entra's does.
            let authority = issuer.clone();
            let entra_discovery = move |axum::extract::Path(tenant): axum::extract::Path<
                String,
            >| {
                let authority = authority.clone();
                async move {
                    let named =
                        if ["common", "organizations", "consumers"].contains(&tenant.as_str()) {
                            "{tenantid}".to_owned()
                        } else {
                            tenant
                        };
                    axum::Json(json!({
                        "issuer": format!("{authority}/{named}/v2.0"),
                        "jwks_uri": format!("{authority}/discovery/keys"),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }))
                }
            };
            axum::Router::new()
                .route(
                    "/{tenant}/v2.0/.well-known/openid-configuration",
                    axum::routing::get(entra_discovery),
                )
                .route(
                    "/.well-known/openid-configuration",
                    axum::routing::get(move || {
                        let d = discovery.clone();
                        async move { axum::Json(d) }
                    }),
                )
                .route(
                    "/discovery/keys",
                    axum::routing::get(move || {
                        let state = jwks_state.clone();
                        async move {
                            let mut s = state.lock().expect("idp state");
                            s.jwks_fetches += 1;
                            let keys: Vec<Value> = s
                                .keys
                                .iter()
                                .filter(|k| k.published)
                                .map(public_jwk)
                                .collect();
                            axum::Json(json!({ "keys": keys }))
                        }
                    }),
                )
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let idp = TestIdp {
            issuer,
            state,
            server,
        };
        idp.add_key("rsa-1", Kind::Rsa, true);
        idp.add_key("ec-1", Kind::Ec, true);
        idp
    }

    /// Makes a key; published keys appear in the JWKS from the next fetch on (a rotation).
    pub fn add_key(&self, kid: &str, kind: Kind, published: bool) {
        let private = match kind {
            Kind::Rsa => Private::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key")),
            Kind::Ec => Private::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec key"),
            ),
        };
        self.state.lock().expect("idp state").keys.push(Key {
            kid: kid.to_owned(),
            private,
            published,
        });
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.lock().expect("idp state").jwks_fetches
    }

    /// The public JWK of `kid` (RSA n/e or EC x/y), as the JWKS shows it.
    pub fn jwk(&self, kid: &str) -> Value {
        let s = self.state.lock().expect("idp state");
        public_jwk(s.keys.iter().find(|k| k.kid == kid).expect("known kid"))
    }

    /// Claims of a valid token for `oid` in the test tenant, with `roles`.
    pub fn claims(&self, oid: &str, roles: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": format!("sub-{oid}"), "oid": oid, "tid": TENANT,
            "iat": now, "nbf": now - 5, "exp": now + 600, "roles": roles,
        })
    }

    /// Entra's v2.0 issuer for tenant `tid`, with this server as the authority host (AZURE_AD_AUTHORITY_HOST).
    pub fn entra_issuer(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.issuer)
    }

    /// A token signed by key `kid` (RS256 for RSA keys, ES256 for EC keys), its header naming `kid`.
    pub fn token(&self, kid: &str, claims: &Value) -> String {
        let alg = match self
            .state
            .lock()
            .expect("idp state")
            .keys
            .iter()
            .find(|k| k.kid == kid)
        {
            Some(Key {
                private: Private::Rsa(_),
                ..
            }) => "RS256",
            _ => "ES256",
        };
        self.token_with_header(kid, &json!({"alg": alg, "typ": "JWT", "kid": kid}), claims)
    }

    /// A token signed by key `signing_kid` under any header (forgeries: another key's kid, a mismatched alg).
    pub fn token_with_header(&self, signing_kid: &str, header: &Value, claims: &Value) -> String {
        let s = self.state.lock().expect("idp state");
        let key = s
            .keys
            .iter()
            .find(|k| k.kid == signing_kid)
            .expect("known kid");
        let signing_input = signing_input(header, claims);
        let signature = match &key.private {
            Private::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .expect("rsa sign");
                sig
            }
            Private::Ec(pair) => pair
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .expect("ec sign")
                .as_ref()
                .to_vec(),
        };
        format!("{signing_input}.{}", b64(&signature))
    }
}

/// `base64url(header).base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An HS256 token whose HMAC key is `secret` (an attacker using the RSA public key as the secret).
pub fn hs256_token(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(kid: &str, claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT", "kid": kid}), claims)
    )
}

fn public_jwk(key: &Key) -> Value {
    match &key.private {
        Private::Rsa(pair) => {
            let public = pair.public_key();
            json!({
                "kty": "RSA", "use": "sig", "kid": key.kid,
                "n": b64(public.modulus().big_endian_without_leading_zero()),
                "e": b64(public.exponent().big_endian_without_leading_zero()),
            })
        }
        Private::Ec(pair) => {
            // Uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
            let point = pair.public_key().as_ref();
            json!({
                "kty": "EC", "use": "sig", "crv": "P-256", "kid": key.kid, "alg": "ES256",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            })
        }
    }
}
