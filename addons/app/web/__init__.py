"""`aigw web`: the gateway under mitmweb, safe to show to debuggers.

What it adds to mitmweb:

- `master.AigwWebMaster` — mitmweb's master with everything it sends to the browser
  redacted: the flow list and live updates (`flow_to_json`), the flow dump
  download, body content and content views, and command results. Credential
  headers keep their name and lose their value, credential query parameters
  too; known secret values (the configured provider keys, and whatever
  credential a flow carries) are scrubbed from any text. Only this master is
  patched; `aigw serve` (mitmdump) serializes nothing. The redaction itself is
  `redact.py`.
- The gateway's own API (keys, query, admin, interceptions, sessions, health)
  never enters the UI's flow store (`master.OwnApiHidingView`): its requests carry
  admin keys and its responses new keys and recorded data.
- `exports.RedactedExports` — mitmweb's export, save and cut commands (`export curl`,
  `save.file`, `save.har`, …) work on redacted copies of the flows.
- `ui.WebUi` addon — comments on each flow (user, instance, model, status,
  tokens), a mark on failed interceptions, the flow bound
  (`aigw_web_max_flows`: mitmweb keeps every flow in memory otherwise), and
  once a request has left for upstream, the credential headers in the kept
  flow are replaced by their redacted form, so a replay or edit from the UI
  cannot reuse the organisation's key.
- The UI observes, it does not steer: it may change only how flows are
  listed (`master.UI_OPTIONS`), refuses commands that configure the gateway, run code
  or send data (`master.REFUSED_COMMANDS`), and nothing intercepts flows (a held flow
  could be edited to carry the organisation's key elsewhere).
- The UI is protected by mitmweb's `web_password` option (a random token is
  generated and logged when it is unset).
"""

