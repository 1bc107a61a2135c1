package torture

// The StoreAndBackends templates of the remote backends (issue 10 item 6,
// issue 13 item 4): the SQLite store and the local keyring of the home,
// as SQLiteLocal, plus one backend the torture's keys live on
// (Config.Backend). The local keyring stays: it MACs the audit
// checkpoints (setup picks "local" first), so `rekey audit verify` checks
// the same chain whatever the keys' backend. What a template needs beyond
// the home comes from Config.Vars; a missing variable fails the run
// before the first life (the templates run with missingkey=error).

// SQLiteAWSKMS is SQLiteLocal plus backend "aws" (type awskms, mode
// new-key) on an AWS KMS endpoint, e.g. the local-kms emulator. Vars:
// "endpoint" (http://127.0.0.1:PORT) and "alias_prefix" (alias/…/, one of
// its own per run, so that runs on one emulator never meet). The SDK's
// default chain gives the credentials: set AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY in the environment of the test and its children.
const SQLiteAWSKMS = SQLiteLocal + `  aws:
    type: awskms
    region: us-east-1
    endpoint: {{printf "%q" .Vars.endpoint}}
    alias_prefix: {{printf "%q" .Vars.alias_prefix}}
    deletion_window_days: 7
`

// SQLitePKCS11 is SQLiteLocal plus backend "hsm" (type pkcs11). Vars:
// "module" (the PKCS#11 library), "token" (the token label: a token of its
// own per run, since the torture's key names are fixed) and "pin_file" (a
// 0600 file holding the user PIN). For SoftHSM2, SOFTHSM2_CONF must be in
// the environment of the test and its children.
const SQLitePKCS11 = SQLiteLocal + `  hsm:
    type: pkcs11
    module: {{printf "%q" .Vars.module}}
    token_label: {{printf "%q" .Vars.token}}
    pin_file: {{printf "%q" .Vars.pin_file}}
`

// SQLiteVault is SQLiteLocal plus backend "vault" (type vault, Transit at
// the default mount). Vars: "address" (http://127.0.0.1:PORT, e.g. a
// kms/vault/transitserver the test process runs, which then outlives
// every worker it kills) and "token_file" (a 0600 file holding the token).
const SQLiteVault = SQLiteLocal + `  vault:
    type: vault
    address: {{printf "%q" .Vars.address}}
    token_file: {{printf "%q" .Vars.token_file}}
`
