// Evaluates one boolean feature for a list of practices with the real OpenFeature Node SDK and
// flagd provider in RPC mode, the way a supplier backend does through its local sidecar.
//
//   node evaluate.mjs --host 127.0.0.1 --port 8013 --feature prospective-record-access \
//     [--ready-timeout-ms 15000] L56296 S92134 ...
//
// Prints one JSON line: {"ready": true} or {"ready": false, "error": "..."}, then one JSON line
// per practice: {"targetingKey", "value", "variant", "reason", "errorCode", "errorMessage",
// "flagMetadata"}, always evaluated with the code default `false`. Exits 0 when the provider
// became ready, 2 when it did not within the timeout (the answers are printed all the same, so
// a caller sees what a backend gets from a provider that is not ready), 64 on a usage error.

import { parseArgs } from 'node:util';

import { FlagdProvider } from '@openfeature/flagd-provider';
import { OpenFeature } from '@openfeature/server-sdk';

const usage = (message) => {
  process.stderr.write(`${message}\nusage: node evaluate.mjs --host H --port P --feature F [--ready-timeout-ms MS] ODS...\n`);
  process.exit(64);
};

let parsed;
try {
  parsed = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      feature: { type: 'string' },
      'ready-timeout-ms': { type: 'string', default: '15000' },
    },
    allowPositionals: true,
  });
} catch (e) {
  usage(e.message);
}
const { values, positionals: practices } = parsed;
const port = Number(values.port);
const readyTimeoutMs = Number(values['ready-timeout-ms']);
if (!values.host || !Number.isInteger(port) || !values.feature || !(readyTimeoutMs > 0)) {
  usage('--host, --port, --feature are required; --ready-timeout-ms must be a positive number');
}

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

// The production options for a backend behind the sidecar: plaintext to loopback (the sidecar
// opens mutual TLS), RPC mode. The provider's LRU cache stays at its default: it holds only
// STATIC answers, which the supplier never sends, so answers for different practices under the
// same flag key must still differ here. `deadlineMs` bounds the wait for the channel to connect
// (default 500 ms); it is raised for a loaded test machine, and is below the ready timeout.
const provider = new FlagdProvider({
  host: values.host,
  port,
  tls: false,
  resolverType: 'rpc',
  deadlineMs: Math.min(5000, readyTimeoutMs),
});

let ready = true;
try {
  let timer;
  await Promise.race([
    OpenFeature.setProviderAndWait(provider),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not ready within ${readyTimeoutMs} ms`)), readyTimeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  print({ ready: true });
} catch (e) {
  ready = false;
  print({ ready: false, error: String(e?.message ?? e) });
}

const client = OpenFeature.getClient();
for (const targetingKey of practices) {
  const d = await client.getBooleanDetails(values.feature, false, { targetingKey });
  print({
    targetingKey,
    value: d.value,
    variant: d.variant ?? null,
    reason: d.reason ?? null,
    errorCode: d.errorCode ?? null,
    errorMessage: d.errorMessage ?? null,
    flagMetadata: d.flagMetadata ?? {},
  });
}

// The provider reconnects forever when it is not ready: close it, then leave.
await Promise.race([OpenFeature.close(), new Promise((resolve) => setTimeout(resolve, 2000))]);
process.exit(ready ? 0 : 2);
