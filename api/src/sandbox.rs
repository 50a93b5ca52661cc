//! Which providers are the emulator (`imagegen emulator`, as `scripts/dev.sh` and docker-compose run it): at
//! start-up, each configured provider whose base URL is on this machine or a private network (a loopback or private
//! address, `localhost`, or a one-label name such as compose's `emulator`) is asked once (`GET <base URL>`); those
//! whose answer carries the emulator's `x-imagegen-emulator` header are marked sandbox in `/api/v1/providers` and in
//! every job. A public host (every real provider's) is never asked, and no real provider sends that header, so a real
//! provider is never marked. A provider that does not answer in time is taken as real.

use imagegen_shared::config::ProviderSettings;
use imagegen_shared::domain::ProviderId;
use std::net::IpAddr;
use std::time::Duration;
use url::Url;

/// The header every answer of the emulator carries (`imagegen_emulator::IDENTITY_HEADER`).
pub const EMULATOR_HEADER: &str = "x-imagegen-emulator";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// An emulator started beside the API (dev.sh) may still be binding its port: refused connections are retried.
const PROBE_ATTEMPTS: u32 = 10;
const PROBE_RETRY_EVERY: Duration = Duration::from_millis(300);

/// Whether `url`'s host is one a real provider cannot be: loopback, private or link-local, or a name without dots.
pub fn is_local(url: &Url) -> bool {
    let private = |ip: IpAddr| match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => private(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost")
                || d.to_ascii_lowercase().ends_with(".localhost")
                || (!d.is_empty() && !d.contains('.'))
        }
        None => false,
    }
}

/// The configured providers and where they are.
fn endpoints(providers: &ProviderSettings) -> Vec<(ProviderId, Url)> {
    let mut out = Vec::new();
    if let Some(o) = &providers.openai {
        out.push((ProviderId::OpenAi, o.base_url.clone()));
    }
    if let Some(a) = &providers.azure {
        out.push((ProviderId::AzureOpenAi, a.endpoint.clone()));
    }
    if let Some(f) = &providers.flux {
        out.push((ProviderId::Flux, f.base_url.clone()));
    }
    if let Some(b) = &providers.bfl {
        out.push((ProviderId::Bfl, b.base_url.clone()));
    }
    out
}

/// Adds to `providers.sandbox` every configured provider that the emulator answers.
pub async fn detect(providers: &mut ProviderSettings) {
    let client = match reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sandbox detection skipped");
            return;
        }
    };
    let probes = endpoints(providers)
        .into_iter()
        .filter(|(p, url)| !providers.sandbox.contains(p) && is_local(url))
        .map(|(provider, url)| {
            let client = client.clone();
            async move { (provider, is_emulator(&client, &url).await) }
        });
    for (provider, emulated) in futures::future::join_all(probes).await {
        if emulated {
            tracing::info!(%provider, "provider is the emulator: marked sandbox");
            providers.sandbox.push(provider);
        }
    }
}

async fn is_emulator(client: &reqwest::Client, url: &Url) -> bool {
    for attempt in 1..=PROBE_ATTEMPTS {
        match client.get(url.clone()).send().await {
            Ok(response) => return response.headers().contains_key(EMULATOR_HEADER),
            Err(e) if e.is_connect() && attempt < PROBE_ATTEMPTS => {
                tokio::time::sleep(PROBE_RETRY_EVERY).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, %url, "provider did not answer the sandbox probe; taken as real");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_local_hosts_are_probed() {
        for local in [
            "http://127.0.0.1:8090/v1",
            "http://localhost:8090/v1",
            "http://emulator:8090/v1",
            "http://10.1.2.3/v1",
            "http://192.168.0.9/v1",
            "http://[::1]:8090/v1",
            "http://[fd00::5]/v1",
            "http://api.localhost/v1",
        ] {
            assert!(is_local(&local.parse().expect("url")), "{local}");
        }
        for public in [
            "https://api.openai.com/v1",
            "https://myres.openai.azure.com",
            "https://api.bfl.ai/v1",
            "https://api.together.xyz/v1",
            "https://8.8.8.8/v1",
            "https://[2001:db8::1]/v1",
        ] {
            assert!(!is_local(&public.parse().expect("url")), "{public}");
        }
    }
}
