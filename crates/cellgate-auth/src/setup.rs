//! Building the whole authentication stack from `[auth]` in `cellgate.toml`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cellgate_config::Config;
use cellgate_kernel::PrincipalKind;
use cellgate_store::Store;
use jsonwebtoken::Algorithm;

use crate::apikeys::{ApiKeyService, ApiKeySettings};
use crate::clock::Clock;
use crate::device::{DeviceFlow, DeviceFlowSettings};
use crate::identity::LOCAL_TENANT;
use crate::instance::{InstanceKey, IssuedToken, LocalIssuer, TokenRequest};
use crate::jwt::{ClaimMapping, IssuerSpec, JwtVerifier, KeySpec};
use crate::{Authenticator, AuthenticatorParts, HttpAuthLayer, ResourceServer, SetupError};

/// The canonical resource URL: `auth.resource_url`, else
/// `http(s)://<server.listen>/mcp` (https when TLS is configured).
pub fn resource_url(config: &Config) -> String {
    match &config.auth.resource_url {
        Some(url) => url.clone(),
        None => {
            let scheme = if config.server.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}/mcp", config.server.listen)
        }
    }
}

/// The `iss` of the instance's own tokens: `auth.local_issuer.issuer`, else
/// the origin of the resource URL.
pub fn local_issuer_id(config: &Config) -> Result<String, SetupError> {
    if let Some(iss) = &config.auth.local_issuer.issuer {
        return Ok(iss.clone());
    }
    let resource = ResourceServer::new(&resource_url(config), Vec::new(), Vec::new())?;
    Ok(resource.origin().to_owned())
}

/// The instance's issuer, with the key from the data directory (created if
/// missing).
pub fn local_issuer(config: &Config, clock: Clock) -> Result<LocalIssuer, SetupError> {
    let key = Arc::new(InstanceKey::load_or_create(&config.data_dir())?);
    local_issuer_with_key(config, key, clock)
}

fn local_issuer_with_key(
    config: &Config,
    key: Arc<InstanceKey>,
    clock: Clock,
) -> Result<LocalIssuer, SetupError> {
    let l = &config.auth.local_issuer;
    LocalIssuer::new(
        key,
        &local_issuer_id(config)?,
        &resource_url(config),
        Duration::from_secs(l.token_ttl_secs),
        Duration::from_secs(l.max_token_ttl_secs),
        clock,
    )
}

/// `cellgate token issue`: signs a token with the instance key of the
/// configured data directory, accepted by every instance sharing that key
/// and configuration.
pub fn issue_dev_token(config: &Config, request: &TokenRequest) -> Result<IssuedToken, SetupError> {
    local_issuer(config, Clock::system())?.issue(request)
}

fn issuer_specs(config: &Config, resource: &str) -> Result<Vec<IssuerSpec>, SetupError> {
    let mut specs = Vec::new();
    for (i, issuer) in config.auth.issuers.iter().enumerate() {
        let key = |field: &str| format!("auth.issuers[{i}].{field}");
        let algorithms = issuer
            .algorithms
            .iter()
            .map(|a| {
                a.as_str()
                    .parse::<Algorithm>()
                    .map_err(|_| SetupError::invalid(key("algorithms"), a.as_str()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hmac = issuer.algorithms.iter().all(|a| a.is_hmac());
        let keys = if let Some(secret) = &issuer.secret {
            KeySpec::Secret {
                secret: secret.as_bytes().to_vec(),
                kid: issuer.kid.clone(),
            }
        } else if let Some(pem) = &issuer.pem {
            KeySpec::Pem {
                pem: pem.clone(),
                kid: issuer.kid.clone(),
            }
        } else if let Some(path) = &issuer.key_file {
            let text = std::fs::read_to_string(path).map_err(|error| SetupError::Io {
                action: "reading the key file",
                path: path.clone(),
                error,
            })?;
            if hmac {
                KeySpec::Secret {
                    secret: text.trim().as_bytes().to_vec(),
                    kid: issuer.kid.clone(),
                }
            } else {
                KeySpec::Pem {
                    pem: text,
                    kid: issuer.kid.clone(),
                }
            }
        } else if let Some(url) = &issuer.jwks_url {
            KeySpec::Jwks {
                url: url.clone(),
                refresh: Duration::from_secs(issuer.jwks_refresh_secs),
                min_refetch: Duration::from_secs(issuer.jwks_min_refetch_secs),
            }
        } else {
            return Err(SetupError::invalid(key("secret"), "no key source"));
        };
        specs.push(IssuerSpec {
            name: issuer.name.clone(),
            issuer: issuer.issuer.clone(),
            audiences: if issuer.audience.is_empty() {
                vec![resource.to_owned()]
            } else {
                issuer.audience.clone()
            },
            algorithms,
            keys,
            leeway: Duration::from_secs(issuer.leeway_secs),
            claims: ClaimMapping {
                principal: issuer.principal_claim.clone(),
                tenant: issuer.tenant_claim.clone(),
                roles: issuer.roles_claim.clone(),
            },
            pinned_tenant: issuer.tenant.clone(),
            principal_kind: PrincipalKind::parse(issuer.principal_kind.as_str())
                .unwrap_or(PrincipalKind::User),
        });
    }
    Ok(specs)
}

/// Everything authentication is made of, built from the configuration.
#[derive(Debug, Clone)]
pub struct AuthStack {
    pub authenticator: Arc<Authenticator>,
    /// Present when the local issuer is on.
    pub instance_key: Option<Arc<InstanceKey>>,
    pub local_issuer: Option<Arc<LocalIssuer>>,
    pub api_keys: Option<Arc<ApiKeyService>>,
    pub device_flow: Option<Arc<DeviceFlow>>,
    last_used_flush: Duration,
}

impl AuthStack {
    /// Builds the stack: parses static keys, loads (or creates) the instance
    /// key when the local issuer is on, and prepares JWKS sources (fetched on
    /// first use).
    pub fn from_config(config: &Config, store: Store) -> Result<AuthStack, SetupError> {
        Self::build(
            config,
            store,
            Clock::system(),
            ApiKeySettings::default(),
            None,
        )
    }

    /// Like [`AuthStack::from_config`] with a given clock, key-hashing cost
    /// and (optionally) instance key, for tests.
    pub fn build(
        config: &Config,
        store: Store,
        clock: Clock,
        mut api_key_settings: ApiKeySettings,
        instance_key: Option<Arc<InstanceKey>>,
    ) -> Result<AuthStack, SetupError> {
        let auth = &config.auth;
        let resource_url = resource_url(config);
        let mut resource = ResourceServer::new(
            &resource_url,
            auth.authorization_servers.clone(),
            auth.scopes_supported.clone(),
        )?;
        let mut specs = issuer_specs(config, &resource_url)?;
        let (instance_key, local_issuer) = if auth.local_issuer.enabled {
            let key = match instance_key {
                Some(key) => key,
                None => Arc::new(InstanceKey::load_or_create(&config.data_dir())?),
            };
            let issuer = Arc::new(local_issuer_with_key(config, key.clone(), clock.clone())?);
            specs.push(issuer.issuer_spec());
            (Some(key), Some(issuer))
        } else {
            (None, None)
        };
        let device_on = auth.local_issuer.device_flow && local_issuer.is_some();
        if device_on && let Some(issuer) = &local_issuer {
            resource.add_authorization_server(issuer.issuer());
        }
        let jwt = Arc::new(JwtVerifier::new(
            specs,
            auth.token_cache_entries as usize,
            clock.clone(),
        )?);
        let api_keys = if auth.api_keys.enabled {
            api_key_settings.cache_ttl = Duration::from_secs(auth.api_keys.cache_ttl_secs);
            api_key_settings.clock = clock.clone();
            Some(Arc::new(
                ApiKeyService::new(store.clone(), api_key_settings)
                    .map_err(|e| SetupError::invalid("auth.api_keys", e.to_string()))?,
            ))
        } else {
            None
        };
        let authenticator = Arc::new(Authenticator::new(AuthenticatorParts {
            required: auth.required,
            anonymous_tenant: LOCAL_TENANT.into(),
            resource: resource.clone(),
            jwt,
            api_keys: api_keys.clone(),
            exempt_paths: auth.exempt_paths.clone(),
        }));
        let device_flow = match (&local_issuer, device_on) {
            (Some(issuer), true) => Some(Arc::new(DeviceFlow::new(
                store,
                issuer.clone(),
                authenticator.clone(),
                DeviceFlowSettings {
                    base_url: resource.origin().to_owned(),
                    code_ttl: Duration::from_secs(auth.local_issuer.device_code_ttl_secs),
                    interval: Duration::from_secs(auth.local_issuer.device_poll_interval_secs),
                    token_ttl: Duration::from_secs(auth.local_issuer.token_ttl_secs),
                    approver_roles: auth.local_issuer.approver_roles.clone(),
                    clock,
                },
            ))),
            _ => None,
        };
        Ok(AuthStack {
            authenticator,
            instance_key,
            local_issuer,
            api_keys,
            device_flow,
            last_used_flush: Duration::from_secs(auth.api_keys.last_used_flush_secs),
        })
    }

    /// The routes authentication serves (to merge into the app's router;
    /// they are exempt from the layer by the default `exempt_paths`):
    /// protected-resource metadata, and the device flow when it is on.
    pub fn routes(&self) -> Router {
        let mut router = self.authenticator.resource().router();
        if let Some(flow) = &self.device_flow {
            router = router.merge(flow.clone().router());
        }
        router
    }

    /// The layer to put in front of protected routes.
    pub fn layer(&self) -> HttpAuthLayer {
        HttpAuthLayer::new(self.authenticator.clone())
    }

    /// Starts the background work (writing API keys' last-used times).
    /// Call from inside a Tokio runtime.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.api_keys
            .iter()
            .map(|keys| keys.spawn_last_used_flusher(self.last_used_flush))
            .collect()
    }
}
