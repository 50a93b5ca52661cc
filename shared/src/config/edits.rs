//! The edits' settings (EDIT_*): limits on input images, and the address policy for images named by URL (fetched by
//! the worker through `net_guard`, as webhooks are sent). Flattened into the API's and the worker's arguments.

use super::ConfigError;
use crate::edit_inputs::{EditLimits, Part};
use crate::net_guard::{AllowList, Policy, Purpose, Refused, Resolver, check_destination};
use url::Url;

#[derive(Debug, Clone, clap::Args)]
pub struct EditArgs {
    /// Most bytes of one input image or mask.
    #[arg(long, env = "EDIT_MAX_IMAGE_BYTES", value_name = "EDIT_MAX_IMAGE_BYTES",
        default_value_t = 50 * 1024 * 1024)]
    pub edit_max_image_bytes: u64,
    /// Most bytes of all of one edit's images and mask together.
    #[arg(long, env = "EDIT_MAX_REQUEST_BYTES", value_name = "EDIT_MAX_REQUEST_BYTES",
        default_value_t = 64 * 1024 * 1024)]
    pub edit_max_request_bytes: u64,
    /// Most pixels (width times height) of one input image.
    #[arg(long, env = "EDIT_MAX_IMAGE_PIXELS", value_name = "EDIT_MAX_IMAGE_PIXELS",
        default_value_t = 4096 * 4096)]
    pub edit_max_image_pixels: u64,
    /// Allow http image URLs in edits, to loopback addresses only (tests and local development).
    #[arg(long, env = "EDIT_URL_ALLOW_INSECURE", value_name = "EDIT_URL_ALLOW_INSECURE",
        default_value_t = false, action = clap::ArgAction::Set)]
    pub edit_url_allow_insecure: bool,
    /// Private networks image URLs may reach anyway: comma-separated CIDRs, e.g. 10.1.0.0/16 (default: none).
    #[arg(
        long,
        env = "EDIT_URL_ALLOWED_NETWORKS",
        value_name = "EDIT_URL_ALLOWED_NETWORKS",
        default_value = ""
    )]
    pub edit_url_allowed_networks: String,
}

/// The edits' settings, checked.
#[derive(Debug, Clone)]
pub struct EditSettings {
    pub limits: EditLimits,
    pub url_policy: Policy,
}

/// The most a setting may raise the per-request total to (bodies are held in memory while checked).
const MAX_REQUEST_BYTES_CAP: u64 = 512 * 1024 * 1024;

impl EditArgs {
    pub fn settings(&self) -> Result<EditSettings, ConfigError> {
        let allow = AllowList::parse(&self.edit_url_allowed_networks)
            .map_err(|e| ConfigError::new("EDIT_URL_ALLOWED_NETWORKS", e.0))?;
        if !(1..=MAX_REQUEST_BYTES_CAP).contains(&self.edit_max_request_bytes) {
            return Err(ConfigError::new(
                "EDIT_MAX_REQUEST_BYTES",
                format!("must be 1 to {MAX_REQUEST_BYTES_CAP}"),
            ));
        }
        if !(1..=self.edit_max_request_bytes).contains(&self.edit_max_image_bytes) {
            return Err(ConfigError::new(
                "EDIT_MAX_IMAGE_BYTES",
                "must be 1 to EDIT_MAX_REQUEST_BYTES",
            ));
        }
        if !(1..=u64::from(u32::MAX)).contains(&self.edit_max_image_pixels) {
            return Err(ConfigError::new(
                "EDIT_MAX_IMAGE_PIXELS",
                "must be 1 to 4294967295",
            ));
        }
        Ok(EditSettings {
            limits: EditLimits {
                max_image_bytes: self.edit_max_image_bytes,
                max_request_bytes: self.edit_max_request_bytes,
                max_pixels: self.edit_max_image_pixels,
            },
            url_policy: Policy::new(
                Purpose::EDIT_IMAGES,
                self.edit_url_allow_insecure,
                allow.networks,
            ),
        })
    }
}

/// Why an image URL in an edit is refused before anything is queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageUrlError {
    #[error("{part} is not a URL: {message}")]
    Invalid { part: Part, message: String },
    #[error("{part}: {refused}")]
    Refused { part: Part, refused: Refused },
}

/// Checks an image URL as the worker will before fetching it (scheme, user info, every resolved address against
/// the policy), so `http://localhost/...` or `https://127.0.0.1/...` is a 4xx at submission rather than a failed
/// job. The worker checks again when it connects (the name may resolve differently by then).
pub async fn check_image_url(
    part: Part,
    text: &str,
    policy: &Policy,
    resolver: &dyn Resolver,
) -> Result<Url, ImageUrlError> {
    let url = Url::parse(text).map_err(|e| ImageUrlError::Invalid {
        part,
        message: e.to_string(),
    })?;
    check_destination(&url, policy, resolver)
        .await
        .map_err(|refused| ImageUrlError::Refused { part, refused })?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net_guard::StaticResolver;
    use clap::Parser;
    use std::net::IpAddr;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edits: EditArgs,
    }

    fn settings(args: &[&str]) -> Result<EditSettings, ConfigError> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .expect("parses")
            .edits
            .settings()
    }

    #[test]
    fn defaults_and_bounds() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.limits, EditLimits::default());
        assert!(!s.url_policy.allow_insecure);
        let e = settings(&[
            "--edit-max-image-bytes",
            "100",
            "--edit-max-request-bytes",
            "50",
        ])
        .expect_err("image over request");
        assert_eq!(e.variable, "EDIT_MAX_IMAGE_BYTES");
        let e = settings(&["--edit-url-allowed-networks", "nonsense"]).expect_err("cidr");
        assert_eq!(e.variable, "EDIT_URL_ALLOWED_NETWORKS");
    }

    #[tokio::test]
    async fn loopback_and_private_image_urls_are_refused_before_queueing() {
        let strict = settings(&[]).expect("defaults").url_policy;
        let resolver = StaticResolver::new()
            .with("localhost", &["127.0.0.1".parse::<IpAddr>().expect("ip")])
            .with(
                "images.example",
                &["93.184.215.14".parse::<IpAddr>().expect("ip")],
            )
            .with(
                "sneaky.example",
                &["10.0.0.7".parse::<IpAddr>().expect("ip")],
            );
        for bad in [
            "http://localhost/cat.png",
            "https://127.0.0.1/cat.png",
            "https://[::1]/cat.png",
            "https://sneaky.example/cat.png",
            "https://169.254.169.254/latest/meta-data",
            "file:///etc/passwd",
            "https://user:pw@images.example/cat.png",
        ] {
            let e = check_image_url(Part::Image(2), bad, &strict, &resolver)
                .await
                .expect_err(bad);
            assert!(e.to_string().starts_with("image[2]"), "{bad}: {e}");
        }
        let e = check_image_url(Part::Image(0), "not a url", &strict, &resolver)
            .await
            .expect_err("invalid");
        assert!(
            matches!(
                e,
                ImageUrlError::Invalid {
                    part: Part::Image(0),
                    ..
                }
            ),
            "{e}"
        );
        check_image_url(
            Part::Image(0),
            "https://images.example/cat.png",
            &strict,
            &resolver,
        )
        .await
        .expect("public https");
        let insecure = settings(&["--edit-url-allow-insecure", "true"])
            .expect("insecure")
            .url_policy;
        check_image_url(Part::Mask, "http://localhost/cat.png", &insecure, &resolver)
            .await
            .expect("loopback http for tests");
    }
}
