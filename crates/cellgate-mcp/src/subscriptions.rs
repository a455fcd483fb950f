//! `subscriptions/listen` (revision 2026-07-28): the stateless replacement
//! for the session's GET stream and `resources/subscribe`. A client opens a
//! long-lived request naming the notifications it wants; the server
//! acknowledges first and then sends only those, each tagged with the
//! subscription's id (the id of the listen request).

use std::collections::HashSet;
use std::sync::Arc;

use cellgate_kernel::{McpError, ProviderEvent};
use serde_json::{Value, json};

use crate::jsonrpc;
use crate::session::Outbound;
use crate::stateless::META_SUBSCRIPTION_ID;

/// The notification types a listener opted in to. Each is opt-in: the
/// server must not send what was not asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionFilter {
    pub tools_list_changed: bool,
    pub prompts_list_changed: bool,
    pub resources_list_changed: bool,
    pub resource_subscriptions: HashSet<String>,
}

impl SubscriptionFilter {
    /// Reads `params.notifications`.
    pub fn parse(v: Option<&Value>) -> Result<Self, McpError> {
        let Some(Value::Object(o)) = v else {
            return Err(McpError::invalid_params(
                "params.notifications must be an object naming the notifications to receive",
            ));
        };
        let flag = |k: &str| -> Result<bool, McpError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(McpError::invalid_params(format!(
                    "params.notifications.{k} must be a boolean"
                ))),
            }
        };
        let resource_subscriptions = match o.get("resourceSubscriptions") {
            None | Some(Value::Null) => HashSet::new(),
            Some(Value::Array(uris)) => uris
                .iter()
                .map(|u| {
                    u.as_str().map(str::to_owned).ok_or_else(|| {
                        McpError::invalid_params(
                            "params.notifications.resourceSubscriptions must list URI strings",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(McpError::invalid_params(
                    "params.notifications.resourceSubscriptions must be an array",
                ));
            }
        };
        Ok(Self {
            tools_list_changed: flag("toolsListChanged")?,
            prompts_list_changed: flag("promptsListChanged")?,
            resources_list_changed: flag("resourcesListChanged")?,
            resource_subscriptions,
        })
    }

    pub fn wants(&self, ev: &ProviderEvent) -> bool {
        match ev {
            ProviderEvent::ToolsChanged => self.tools_list_changed,
            ProviderEvent::PromptsChanged => self.prompts_list_changed,
            ProviderEvent::ResourcesChanged => self.resources_list_changed,
            ProviderEvent::ResourceUpdated { uri } => self.resource_subscriptions.contains(uri),
        }
    }

    /// The filter as acknowledged: every type this server can send is honoured.
    pub fn to_json(&self) -> Value {
        let mut v = json!({});
        for (k, on) in [
            ("toolsListChanged", self.tools_list_changed),
            ("promptsListChanged", self.prompts_list_changed),
            ("resourcesListChanged", self.resources_list_changed),
        ] {
            if on {
                v[k] = json!(true);
            }
        }
        if !self.resource_subscriptions.is_empty() {
            let mut uris: Vec<&String> = self.resource_subscriptions.iter().collect();
            uris.sort();
            v["resourceSubscriptions"] = json!(uris);
        }
        v
    }
}

/// One open listen stream.
pub struct Listener {
    pub id: Value,
    pub filter: SubscriptionFilter,
    out: Arc<dyn Outbound>,
}

impl Listener {
    pub fn new(id: Value, filter: SubscriptionFilter, out: Arc<dyn Outbound>) -> Self {
        Self { id, filter, out }
    }

    /// Sends a notification tagged with this subscription's id.
    pub fn send(&self, method: &str, mut params: Value) {
        if let Some(p) = params.as_object_mut() {
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            meta[META_SUBSCRIPTION_ID] = self.id.clone();
        }
        self.out.send(&jsonrpc::notification(method, params), false);
    }

    /// The first message of the stream.
    pub fn acknowledge(&self) {
        self.send(
            "notifications/subscriptions/acknowledged",
            json!({ "notifications": self.filter.to_json() }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_opt_in() {
        let f = SubscriptionFilter::parse(Some(
            &json!({"promptsListChanged": true, "resourceSubscriptions": ["a://x"]}),
        ))
        .unwrap();
        assert!(f.wants(&ProviderEvent::PromptsChanged));
        assert!(!f.wants(&ProviderEvent::ToolsChanged));
        assert!(f.wants(&ProviderEvent::ResourceUpdated {
            uri: "a://x".into()
        }));
        assert!(!f.wants(&ProviderEvent::ResourceUpdated {
            uri: "a://y".into()
        }));
        assert_eq!(
            f.to_json(),
            json!({"promptsListChanged": true, "resourceSubscriptions": ["a://x"]})
        );
        for bad in [
            None,
            Some(json!([])),
            Some(json!({"toolsListChanged": 1})),
            Some(json!({"resourceSubscriptions": [1]})),
        ] {
            assert!(SubscriptionFilter::parse(bad.as_ref()).is_err(), "{bad:?}");
        }
    }
}
