'use strict';
/**
 * RealMultiLLM client for Node.js: the LLM service and the vault over gRPC.
 *
 * The protos are loaded at run time from ../../protos (override with
 * RMLLM_PROTO_ROOT) by @grpc/proto-loader, so there is no generated code.
 * Messages are plain objects with the proto field names (snake_case), enums as
 * their names (e.g. "FINISH_REASON_STOP") and int64 values as numbers.
 *
 *   const { makeClients } = require('./index');
 *   const rmllm = makeClients({ token: process.env.RMLLM_TOKEN });
 *   await rmllm.putProviderConfig({ provider: 'openai', api_key: key });
 *   for await (const event of rmllm.streamChat({ provider: 'openai',
 *       messages: [{ role: 'ROLE_USER', content: 'Hi' }] })) {
 *     if (event.delta !== undefined) process.stdout.write(event.delta);
 *     else if (event.done) console.log(event.done.finish_reason, event.done.usage);
 *   }
 *   rmllm.close();
 *
 * Stream events: {delta} (text), {reasoning} (reasoning text, with
 * reasoning.include_reasoning), {toolCall: {index, id, name, arguments_delta}}
 * (pieces of a tool call; indices 0..n-1 per answer), then {done} once, carrying
 * tool_calls assembled, reasoning and provider_state (a Buffer: send it back
 * unchanged on the next turn's assistant message). Tools take a JSON Schema:
 * tool({ name, description, parameters }) turns plain JSON into the
 * google.protobuf.Struct the proto wants; struct() and fromStruct() convert.
 *
 * Every call sends `authorization: Bearer <token>` and has a deadline; failures
 * reject with an RmllmError carrying the ErrorInfo reason, metadata, retryAfter
 * (seconds, from RetryInfo) and fieldViolations (from BadRequest).
 */

const net = require('node:net');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = process.env.RMLLM_PROTO_ROOT || path.resolve(__dirname, '..', '..', 'protos');
const DEFAULT_LLM_TARGET = '127.0.0.1:50051';
const DEFAULT_VAULT_TARGET = '127.0.0.1:50052';
const DEFAULT_TIMEOUT_MS = 30000;
const DEFAULT_CHAT_TIMEOUT_MS = 300000;
const LLM_SERVICE = 'realmultillm.llm.v1.LLMService';
const VAULT_SERVICE = 'realmultillm.vault.v1.VaultService';

// Retry UNAVAILABLE only for idempotent reads, as the Python client does.
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: [
        { service: VAULT_SERVICE, method: 'GetProviderConfig' },
        { service: VAULT_SERVICE, method: 'ListProviderConfigs' },
        { service: LLM_SERVICE, method: 'ListProviders' },
        { service: LLM_SERVICE, method: 'ListModels' },
      ],
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: '0.2s',
        maxBackoff: '2s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
  retryThrottling: { maxTokens: 10, tokenRatio: 0.1 },
  // Several replicas behind one target: spread the calls, skip the ones that are down.
  loadBalancingConfig: [{ round_robin: {} }],
});

/**
 * One gRPC target from one address, several (an array, or one string separated
 * by commas: IP addresses or localhost, each with a port), or a gRPC name such as
 * dns:///llm.internal:50051. Several addresses become an ipv4:/ipv6: target.
 */
function channelTarget(target) {
  const parts = (Array.isArray(target) ? target : [target])
    .flatMap((t) => String(t).split(','))
    .map((t) => t.trim())
    .filter((t) => t);
  if (parts.length === 0) throw new Error('give at least one target (HOST:PORT)');
  if (parts.length === 1) return parts[0];
  const families = new Set();
  const addresses = parts.map((part) => {
    const match = /^\[?([^\]]*?)\]?:(\d+)$/.exec(part);
    if (!match || /^(dns|ipv4|ipv6|unix|unix-abstract|xds):/.test(part)) throw new Error(`several targets must each be IP:PORT, not ${part}`);
    const host = match[1] === 'localhost' ? '127.0.0.1' : match[1];
    const family = net.isIP(host);
    if (family === 0) {
      throw new Error(`several targets must be IP addresses (${host} is a name); for several hosts by name use one dns:///NAME:PORT target`);
    }
    families.add(family);
    return family === 6 ? `[${host}]:${match[2]}` : `${host}:${match[2]}`;
  });
  if (families.size > 1) throw new Error('several targets must all be IPv4 or all IPv6');
  return (families.has(6) ? 'ipv6:' : 'ipv4:') + addresses.join(',');
}

// google.rpc.Status and the details the services send, for decoding
// the `grpc-status-details-bin` trailer.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: 'Duration', id: 1 } } },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const Status = rpcTypes.lookupType('google.rpc.Status');
const DETAIL_TYPES = {
  'type.googleapis.com/google.rpc.ErrorInfo': rpcTypes.lookupType('google.rpc.ErrorInfo'),
  'type.googleapis.com/google.rpc.RetryInfo': rpcTypes.lookupType('google.rpc.RetryInfo'),
  'type.googleapis.com/google.rpc.BadRequest': rpcTypes.lookupType('google.rpc.BadRequest'),
};
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, value]) => [value, name]));

/** A failed call: gRPC code, ErrorInfo reason, metadata, retryAfter (s), fieldViolations, requestId. */
class RmllmError extends Error {
  constructor(message, { code, reason, metadata = {}, retryAfter = null, fieldViolations = [], requestId = '' }) {
    super(requestId ? `${message} [request id ${requestId}]` : message);
    this.name = 'RmllmError';
    this.code = code;
    this.codeName = CODE_NAMES[code] || 'UNKNOWN';
    this.reason = reason || this.codeName;
    this.metadata = metadata;
    this.provider = metadata.provider || null;
    this.retryAfter = retryAfter;
    this.fieldViolations = fieldViolations;
    this.requestId = requestId;
  }
}

/** The RmllmError for a grpc-js ServiceError, decoding the rich status when present. */
function fromGrpcError(err) {
  const fields = { code: err.code ?? grpc.status.UNKNOWN };
  const requestId = err.metadata ? err.metadata.get('x-request-id') : [];
  if (requestId.length > 0) fields.requestId = String(requestId[0]);
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (raw.length > 0) {
    try {
      const status = Status.toObject(Status.decode(raw[0]), { longs: Number });
      for (const detail of status.details || []) {
        const type = DETAIL_TYPES[detail.type_url];
        if (!type) continue;
        const value = type.toObject(type.decode(detail.value), { longs: Number, defaults: true });
        if (detail.type_url.endsWith('ErrorInfo') && !fields.reason) {
          fields.reason = value.reason;
          fields.metadata = value.metadata || {};
        } else if (detail.type_url.endsWith('RetryInfo')) {
          const delay = value.retry_delay || {};
          fields.retryAfter = (delay.seconds || 0) + (delay.nanos || 0) / 1e9;
        } else if (detail.type_url.endsWith('BadRequest')) {
          fields.fieldViolations = value.field_violations.map(({ field, description }) => ({ field, description }));
        }
      }
    } catch (decodeError) {
      // Malformed details: keep the plain status.
    }
  }
  return new RmllmError(err.details || err.message, fields);
}

// google.protobuf.Value comes from protobufjs's bundled descriptors, whose field
// names are camelCase whatever keepCase says.
/** A plain JSON value as a google.protobuf.Value message. */
function value(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(v)) return { listValue: { values: v.map(value) } };
  switch (typeof v) {
    case 'string':
      return { stringValue: v };
    case 'number':
      return { numberValue: v };
    case 'boolean':
      return { boolValue: v };
    default:
      return { structValue: struct(v) };
  }
}

/** A plain JSON object as a google.protobuf.Struct message. */
function struct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, value(v)])) };
}

function plain(v) {
  const kind = v.kind || Object.keys(v).find((k) => k.endsWith('Value'));
  switch (kind) {
    case 'structValue':
      return fromStruct(v.structValue);
    case 'listValue':
      return (v.listValue.values || []).map(plain);
    case 'nullValue':
      return null;
    default:
      return v[kind];
  }
}

/** A google.protobuf.Struct message (as decoded, or as built by struct()) back to plain JSON. */
function fromStruct(message) {
  return Object.fromEntries(Object.entries(message.fields || {}).map(([k, v]) => [k, plain(v)]));
}

/** A Tool message from a name, a description and a JSON Schema object. */
function tool({ name, description = '', parameters, strict = false }) {
  return { name, description, strict, ...(parameters ? { parameters: struct(parameters) } : {}) };
}

let services = null;
function loadServices() {
  if (services === null) {
    const definition = protoLoader.loadSync(
      ['realmultillm/llm/v1/llm.proto', 'realmultillm/vault/v1/vault.proto'],
      { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] },
    );
    const loaded = grpc.loadPackageDefinition(definition);
    services = { LLMService: loaded.realmultillm.llm.v1.LLMService, VaultService: loaded.realmultillm.vault.v1.VaultService };
  }
  return services;
}

/**
 * Clients for both services. Options: llmTarget, vaultTarget (each one address,
 * several, or a dns:/// name: see channelTarget), token,
 * credentials (grpc.ChannelCredentials; insecure by default, for loopback),
 * timeoutMs (default 30 s), chatTimeoutMs (Chat and StreamChat, default 300 s).
 */
function makeClients({
  llmTarget = DEFAULT_LLM_TARGET,
  vaultTarget = DEFAULT_VAULT_TARGET,
  token,
  credentials = grpc.credentials.createInsecure(),
  timeoutMs = DEFAULT_TIMEOUT_MS,
  chatTimeoutMs = DEFAULT_CHAT_TIMEOUT_MS,
} = {}) {
  if (!token) throw new Error('a token is required: set RMLLM_TOKEN');
  const { LLMService, VaultService } = loadServices();
  const options = { 'grpc.service_config': SERVICE_CONFIG, 'grpc.enable_retries': 1, 'grpc.primary_user_agent': 'rmllm-node/0.1.0' };
  const llm = new LLMService(channelTarget(llmTarget), credentials, options);
  const vault = new VaultService(channelTarget(vaultTarget), credentials, options);
  const metadata = () => {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${token}`);
    return md;
  };
  const unary = (client, method, request, ms) =>
    new Promise((resolve, reject) => {
      client[method](request, metadata(), { deadline: Date.now() + ms }, (err, response) =>
        err ? reject(fromGrpcError(err)) : resolve(response));
    });

  /** Yields {delta}, {reasoning} and {toolCall} events as they come, then {done} once;
   * throws RmllmError. */
  async function* streamChat(request, { timeoutMs: ms = chatTimeoutMs } = {}) {
    const call = llm.StreamChat(request, metadata(), { deadline: Date.now() + ms });
    // Errors reach the caller through the iterator below; this listener only makes
    // sure a status arriving after an early stop can never be an unhandled 'error'.
    call.on('error', () => {});
    let finished = false;
    try {
      for await (const message of call) {
        if (message.event === 'done') {
          finished = true;
          yield { done: message.done };
          return;
        }
        if (message.event === 'reasoning_delta') yield { reasoning: message.reasoning_delta };
        else if (message.event === 'tool_call_delta') yield { toolCall: message.tool_call_delta };
        else yield { delta: message.delta };
      }
    } catch (err) {
      throw err instanceof RmllmError ? err : fromGrpcError(err);
    } finally {
      if (!finished) call.cancel(); // the caller stopped early, or the stream failed
    }
    throw new RmllmError('the stream ended without its final message', {
      code: grpc.status.UNAVAILABLE,
      reason: 'UPSTREAM_STREAM_TRUNCATED',
    });
  }

  return {
    llm,
    vault,
    chat: (request, { timeoutMs: ms = chatTimeoutMs } = {}) => unary(llm, 'Chat', request, ms),
    streamChat,
    testKey: (request, { timeoutMs: ms = timeoutMs } = {}) => unary(llm, 'TestKey', request, ms),
    listProviders: ({ timeoutMs: ms = timeoutMs } = {}) => unary(llm, 'ListProviders', {}, ms),
    listModels: (request, { timeoutMs: ms = timeoutMs } = {}) => unary(llm, 'ListModels', request, ms),
    putProviderConfig: (request, { timeoutMs: ms = timeoutMs } = {}) => unary(vault, 'PutProviderConfig', request, ms),
    getProviderConfig: (request, { timeoutMs: ms = timeoutMs } = {}) => unary(vault, 'GetProviderConfig', request, ms),
    listProviderConfigs: ({ timeoutMs: ms = timeoutMs } = {}) => unary(vault, 'ListProviderConfigs', {}, ms),
    updateProviderConfig: (request, { timeoutMs: ms = timeoutMs } = {}) =>
      unary(vault, 'UpdateProviderConfig', request, ms),
    deleteProviderConfig: (request, { timeoutMs: ms = timeoutMs } = {}) =>
      unary(vault, 'DeleteProviderConfig', request, ms),
    close() {
      llm.close();
      vault.close();
    },
  };
}

/**
 * A cost in US dollars as people read it: fixed notation, at most 10 decimals (the
 * server rounds costs to 1e-10 USD), at least 2: formatUsd(5.1e-6) === '$0.0000051'.
 */
function formatUsd(value) {
  const [whole, fraction = ''] = (Number(value) || 0).toFixed(10).replace(/0+$/, '').split('.');
  return `$${whole}.${fraction.padEnd(2, '0')}`;
}

module.exports = {
  makeClients,
  channelTarget,
  fromGrpcError,
  formatUsd,
  RmllmError,
  tool,
  struct,
  fromStruct,
  SERVICE_CONFIG,
  DEFAULT_LLM_TARGET,
  DEFAULT_VAULT_TARGET,
};
