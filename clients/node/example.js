'use strict';
/**
 * Example: store a key in the vault, test it, and stream a chat.
 *
 *   RMLLM_TOKEN=rmk_... RMLLM_EXAMPLE_PROVIDER=openai RMLLM_EXAMPLE_KEY=sk-... node example.js
 *
 * Environment: RMLLM_TARGET (LLM service, default 127.0.0.1:50051),
 * RMLLM_VAULT_TARGET (vault, default 127.0.0.1:50052), RMLLM_TOKEN, and
 * RMLLM_EXAMPLE_PROVIDER (default openai), RMLLM_EXAMPLE_KEY (the key to store;
 * empty is allowed for providers that need none), RMLLM_EXAMPLE_BASE_URL,
 * RMLLM_EXAMPLE_PROMPT.
 *
 * stdout: the streamed text as it arrives, a newline, then one JSON line
 * {"text", "finish_reason", "usage", "model", "provider"}. Progress goes to stderr.
 * On failure: one line on stderr ("example: CODE REASON: message") and exit 1.
 */

const { makeClients, formatUsd, RmllmError } = require('./index');

async function main(env) {
  const provider = env.RMLLM_EXAMPLE_PROVIDER || 'openai';
  const prompt = env.RMLLM_EXAMPLE_PROMPT || 'Say hello in five words.';
  const rmllm = makeClients({
    llmTarget: env.RMLLM_TARGET || undefined,
    vaultTarget: env.RMLLM_VAULT_TARGET || undefined,
    token: env.RMLLM_TOKEN,
  });
  try {
    const { config } = await rmllm.putProviderConfig({
      provider,
      api_key: env.RMLLM_EXAMPLE_KEY || '',
      base_url: env.RMLLM_EXAMPLE_BASE_URL || '',
    });
    process.stderr.write(`stored the ${config.provider} key${config.key_hint ? ` ending …${config.key_hint}` : ''}\n`);

    const test = await rmllm.testKey({ provider });
    process.stderr.write(`test-key: ${test.reason}: ${test.message}\n`);

    let text = '';
    let done = null;
    for await (const event of rmllm.streamChat({ provider, messages: [{ role: 'ROLE_USER', content: prompt }] })) {
      if (event.done) {
        done = event.done;
      } else {
        text += event.delta;
        process.stdout.write(event.delta);
      }
    }
    process.stdout.write('\n');
    const { input_tokens, output_tokens, total_tokens, cost_usd } = done.usage;
    process.stdout.write(
      `${JSON.stringify({
        text,
        finish_reason: done.finish_reason,
        usage: { input_tokens, output_tokens, total_tokens, cost_usd, cost: formatUsd(cost_usd) },
        model: done.model,
        provider: done.provider,
      })}\n`,
    );
  } finally {
    rmllm.close();
  }
}

main(process.env).catch((err) => {
  if (err instanceof RmllmError) {
    process.stderr.write(`example: ${err.codeName} ${err.reason}: ${err.message}\n`);
  } else {
    process.stderr.write(`example: ${err.message}\n`);
  }
  process.exitCode = 1;
});
