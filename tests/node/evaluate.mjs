// Evaluates flags and config keys with the Node OpenFeature SDK and the flagd provider, in the
// mode given, and prints one JSON line per answer (tests/test_openfeature_node.py reads them).
// Usage: node evaluate.mjs <rpc|in-process> <host> <port> <questions.json>
import { readFileSync } from 'node:fs';
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';

const [mode, host, port, questionsFile] = process.argv.slice(2);
const questions = JSON.parse(readFileSync(questionsFile, 'utf8'));
await OpenFeature.setProviderAndWait(
  new FlagdProvider({ host, port: Number(port), resolverType: mode, deadlineMs: 5000 }),
);
const client = OpenFeature.getClient();
const calls = {
  boolean: (k, d, c) => client.getBooleanDetails(k, d, c),
  number: (k, d, c) => client.getNumberDetails(k, d, c),
  string: (k, d, c) => client.getStringDetails(k, d, c),
};
for (const { key, type, fallback, context } of questions) {
  const details = await calls[type](key, fallback, context);
  console.log(JSON.stringify({ key, context, value: details.value, reason: details.reason,
    variant: details.variant ?? null, errorCode: details.errorCode ?? null }));
}
await OpenFeature.close();
