/**
 * The OpenAI wire formats the relay speaks: request schemas that reject what
 * an upstream would reject anyway (so a client's mistake never counts against
 * an upstream), and cheap checks of upstream responses, so that a 200 that is
 * not a usable answer (cut off, empty, a quota error in disguise) can be
 * counted against that upstream and failed over.
 *
 * Requests are decoded with unknown fields preserved: the relay forwards what
 * it does not know untouched, so new API parameters keep working.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as AST from "effect/SchemaAST"

// ---------------------------------------------------------------------------
// Requests

/** A message annotation that replaces whatever the schema would have said. */
const expecting = (message: string) => ({ message: () => ({ message, override: true }) })

/**
 * What a composite schema takes, in a few words, for messages about a value
 * of the wrong kind ("expected an array of messages, got \"hi\""). Unlike
 * `expecting`, problems inside a value of the right kind keep their own path
 * and message.
 */
const describing = (description: string) => ({ description })

/** An optional field that may also be `null`, as the API reference allows for most parameters. */
const nullable = <S extends Schema.Schema.Any>(schema: S, expectation?: string) =>
  Schema.optional(
    expectation === undefined ? Schema.NullOr(schema) : Schema.NullOr(schema).annotations(expecting(expectation))
  )

const LooseObject = Schema.Record({ key: Schema.String, value: Schema.Unknown })

/** A content part (text, image_url, input_audio, file, ...): only its `type` is checked. */
export const ContentPart = Schema.Struct({ type: Schema.String }, LooseObject).annotations(
  describing("a content part (an object with a type)")
)
export type ContentPart = typeof ContentPart.Type

const Content = Schema.Union(Schema.String, Schema.Array(ContentPart)).annotations(
  describing("a string or an array of content parts")
)

export const ToolCall = Schema.Struct({
  id: Schema.String,
  type: Schema.Literal("function"),
  function: Schema.Struct({ name: Schema.String, arguments: Schema.String })
})
export type ToolCall = typeof ToolCall.Type

const SystemMessage = Schema.Struct({
  role: Schema.Literal("system"),
  content: Content,
  name: Schema.optional(Schema.String)
})
const DeveloperMessage = Schema.Struct({
  role: Schema.Literal("developer"),
  content: Content,
  name: Schema.optional(Schema.String)
})
const UserMessage = Schema.Struct({
  role: Schema.Literal("user"),
  content: Content,
  name: Schema.optional(Schema.String)
})
/** Content may be null or absent when the assistant called tools. */
const AssistantMessage = Schema.Struct({
  role: Schema.Literal("assistant"),
  content: nullable(Content),
  name: Schema.optional(Schema.String),
  refusal: nullable(Schema.String),
  tool_calls: Schema.optional(Schema.Array(ToolCall).annotations(describing("an array of tool calls"))),
  function_call: nullable(LooseObject),
  audio: nullable(LooseObject)
})
const ToolMessage = Schema.Struct({
  role: Schema.Literal("tool"),
  content: Content,
  tool_call_id: Schema.String
})

export const ChatMessage = Schema.Union(SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage)
  .annotations(describing("a message object with a role"))
export type ChatMessage = typeof ChatMessage.Type

export const Tool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: Schema.String,
    description: Schema.optional(Schema.String),
    parameters: Schema.optional(LooseObject),
    strict: nullable(Schema.Boolean)
  })
})
export type Tool = typeof Tool.Type

export const ResponseFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    json_schema: Schema.Struct({
      name: Schema.String,
      description: Schema.optional(Schema.String),
      schema: Schema.optional(LooseObject),
      strict: nullable(Schema.Boolean)
    })
  })
).annotations(describing(`an object with a type of "text", "json_object" or "json_schema"`))
export type ResponseFormat = typeof ResponseFormat.Type

const PositiveInt = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))
const Penalty = Schema.Number.pipe(Schema.between(-2, 2))

/**
 * `POST /v1/chat/completions`. Enumerations that OpenAI keeps extending
 * (`reasoning_effort`, `service_tier`, `modalities`) are only checked to be
 * strings: the upstream is the judge of their values.
 */
export const ChatCompletionRequest = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1)).annotations(expecting("expected a non-empty string")),
  messages: Schema.Array(ChatMessage).annotations(describing("an array of messages")).pipe(Schema.minItems(1, {
    message: () => "expected a non-empty array of messages"
  })),
  temperature: nullable(Schema.Number.pipe(Schema.between(0, 2)), "expected a number between 0 and 2"),
  top_p: nullable(Schema.Number.pipe(Schema.between(0, 1)), "expected a number between 0 and 1"),
  n: nullable(PositiveInt, "expected an integer of at least 1"),
  stream: nullable(Schema.Boolean, "expected a boolean"),
  stream_options: nullable(Schema.Struct({ include_usage: Schema.optional(Schema.Boolean) })),
  stop: nullable(Schema.Union(Schema.String, Schema.Array(Schema.String)), "expected a string or an array of strings"),
  max_tokens: nullable(PositiveInt, "expected an integer of at least 1"),
  max_completion_tokens: nullable(PositiveInt, "expected an integer of at least 1"),
  presence_penalty: nullable(Penalty, "expected a number between -2 and 2"),
  frequency_penalty: nullable(Penalty, "expected a number between -2 and 2"),
  logit_bias: nullable(Schema.Record({ key: Schema.String, value: Schema.Number }), "expected an object of numbers"),
  user: Schema.optional(Schema.String),
  seed: nullable(Schema.Int, "expected an integer"),
  tools: Schema.optional(Schema.Array(Tool).annotations(describing("an array of tools"))),
  tool_choice: Schema.optional(
    Schema.Union(Schema.Literal("none", "auto", "required"), Schema.Struct({ type: Schema.String }, LooseObject))
      .annotations(expecting("expected 'none', 'auto', 'required' or an object naming a tool"))
  ),
  parallel_tool_calls: nullable(Schema.Boolean, "expected a boolean"),
  response_format: Schema.optional(ResponseFormat),
  metadata: nullable(Schema.Record({ key: Schema.String, value: Schema.String }), "expected an object of strings"),
  store: nullable(Schema.Boolean, "expected a boolean"),
  logprobs: nullable(Schema.Boolean, "expected a boolean"),
  top_logprobs: nullable(Schema.Int.pipe(Schema.between(0, 20)), "expected an integer between 0 and 20"),
  reasoning_effort: nullable(Schema.String, "expected a string"),
  modalities: nullable(Schema.Array(Schema.String), "expected an array of strings"),
  audio: nullable(LooseObject, "expected an object"),
  prediction: nullable(LooseObject, "expected an object"),
  service_tier: nullable(Schema.String, "expected a string")
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

/** `POST /v1/embeddings`. An empty input (an empty array) is refused, as the upstream would. */
export const EmbeddingsRequest = Schema.Struct({
  model: Schema.String.pipe(Schema.minLength(1)).annotations(expecting("expected a non-empty string")),
  input: Schema.Union(
    Schema.String,
    Schema.Array(Schema.String).pipe(Schema.minItems(1)),
    Schema.Array(Schema.Number).pipe(Schema.minItems(1)),
    Schema.Array(Schema.Array(Schema.Number).pipe(Schema.minItems(1))).pipe(Schema.minItems(1))
  ).annotations(expecting("expected a string, a non-empty array of strings, or tokens as arrays of numbers")),
  encoding_format: Schema.optional(
    Schema.Literal("float", "base64").annotations(expecting("expected 'float' or 'base64'"))
  ),
  dimensions: Schema.optional(PositiveInt.annotations(expecting("expected an integer of at least 1"))),
  user: Schema.optional(Schema.String)
})
export type EmbeddingsRequest = typeof EmbeddingsRequest.Type

/**
 * How deep a request body may nest objects and arrays. Real requests stay far
 * below it: a chat request with a JSON schema ten levels deep (OpenAI's own
 * limit for structured outputs) nests about 30 deep. Bodies nested thousands
 * deep only serve to exhaust recursive code, so they are refused before parsing.
 */
export const MAX_JSON_DEPTH = 128

/**
 * Whether JSON text nests objects and arrays deeper than `limit`. One linear
 * pass, no recursion, no parsing: brackets inside strings do not count, and
 * the scan stops as soon as the limit is passed. String contents are skipped
 * with `indexOf`, so a long message costs little. Text that is not valid
 * JSON is left for `JSON.parse` to refuse.
 */
export const nestingExceeds = (text: string, limit: number = MAX_JSON_DEPTH): boolean => {
  let depth = 0
  const n = text.length
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i)
    if (c === 34 /* " */) {
      // Jump to the closing quote: the next one not escaped by an odd run of backslashes.
      let end = text.indexOf("\"", i + 1)
      for (;;) {
        if (end === -1) return false
        let slashes = 0
        while (text.charCodeAt(end - 1 - slashes) === 92 /* \ */) slashes++
        if ((slashes & 1) === 0) break
        end = text.indexOf("\"", end + 1)
      }
      i = end
    } else if (c === 123 /* { */ || c === 91 /* [ */) {
      if (++depth > limit) return true
    } else if (c === 125 /* } */ || c === 93 /* ] */) {
      depth--
    }
  }
  return false
}

/** A request the relay refuses before any upstream sees it (HTTP 400). */
export class InvalidRequest extends Data.TaggedError("InvalidRequest")<{
  readonly message: string
  /** The offending field as OpenAI names it (`messages[0].role`), or null for the body itself. */
  readonly param: string | null
}> {}

/** `["messages", 0, "role"]` → `messages[0].role`; an overlong key (a caller's own) is cut. */
const formatPath = (path: ReadonlyArray<PropertyKey>): string | null => {
  let out = ""
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`
    else {
      const name = String(segment)
      const short = name.length > 64 ? `${name.slice(0, 61)}...` : name
      out += out === "" ? short : `.${short}`
    }
  }
  return out === "" ? null : out
}

const sentence = (text: string): string => {
  const s = text.charAt(0).toLowerCase() + text.slice(1)
  return s.endsWith(".") ? s : `${s}.`
}

/** A value as a message shows it: short scalars as they are, anything else by its kind only. */
const shown = (u: unknown): string => {
  if (u === undefined) return "nothing"
  if (typeof u === "string") return u.length <= 40 ? JSON.stringify(u) : `a string of ${u.length} characters`
  if (u === null || typeof u === "number" || typeof u === "boolean") return String(u)
  return Array.isArray(u) ? "an array" : typeof u === "object" ? "an object" : typeof u
}

/**
 * What a schema expects, in a few words: its `description` annotation, or its
 * shape (`an array`, `an object`, literals quoted). Never the schema printed
 * out: for a union of message types that is 1.4 KB of TypeScript.
 */
const describeAst = (ast: AST.AST): string => {
  const description = AST.getDescriptionAnnotation(ast)
  if (Option.isSome(description)) return description.value
  switch (ast._tag) {
    case "Literal":
      return ast.literal === null ? "null" : JSON.stringify(ast.literal) ?? String(ast.literal)
    case "StringKeyword":
      return "a string"
    case "NumberKeyword":
      return "a number"
    case "BooleanKeyword":
      return "a boolean"
    case "TupleType":
      return "an array"
    case "TypeLiteral":
      return "an object"
    case "Refinement":
      return describeAst(ast.from)
    case "Transformation":
      return describeAst(ast.to)
    case "Union": {
      // An optional field decodes as `X | undefined`: "absent" needs no words.
      const parts = [...new Set(ast.types.filter((t) => t._tag !== "UndefinedKeyword").map(describeAst))]
      return parts.length === 1 ? parts[0]! : `${parts.slice(0, -1).join(", ")} or ${parts[parts.length - 1]}`
    }
    default:
      return "a valid value"
  }
}

/** The message annotation an issue's schema carries, following Effect's rules for when it applies. */
const annotatedMessage = (issue: ParseResult.ParseIssue): string | undefined => {
  if (!("ast" in issue)) return undefined
  const annotation = AST.getMessageAnnotation(issue.ast)
  if (Option.isNone(annotation)) return undefined
  const result = annotation.value(issue)
  const own = typeof result === "string"
    ? { message: result, override: false }
    : "message" in result && typeof result.message === "string"
    ? { message: result.message, override: result.override === true }
    : undefined
  if (own === undefined) return undefined
  // Without `override`, a container's message is for the container's own failure only.
  const inner = !own.override && (
    issue._tag === "Composite" ||
    (issue._tag === "Refinement" && issue.kind === "From") ||
    (issue._tag === "Transformation" && issue.kind !== "Transformation")
  )
  if (!inner) return own.message
  return issue._tag === "Refinement" || issue._tag === "Transformation" ? annotatedMessage(issue.issue) : undefined
}

/** An issue that says only "not this type" (nothing about the value's insides). */
const isShallow = (issue: ParseResult.ParseIssue): boolean =>
  issue._tag === "Type" ||
  (issue._tag === "Refinement" && issue.kind === "From" && isShallow(issue.issue)) ||
  (issue._tag === "Transformation" && issue.kind === "Encoded" && isShallow(issue.issue))

interface Problem {
  readonly path: ReadonlyArray<PropertyKey>
  /** Undefined: a required field is missing. */
  readonly message: string | undefined
}

const expected = (path: ReadonlyArray<PropertyKey>, ast: AST.AST, actual: unknown): Problem => ({
  path,
  message: `expected ${describeAst(ast)}, got ${shown(actual)}`
})

/**
 * The first problem of a decoding failure, as one short line. Iterative
 * descent (no recursion on the value), and the value itself is shown only
 * when it is a short scalar. A union that nothing matched says what any of
 * its members would take; a union where one member got further reports that
 * member's deeper problem (`messages[0].content[0].type` is missing), not a
 * mismatch with the first member.
 */
const firstProblem = (root: ParseResult.ParseIssue): Problem => {
  let issue = root
  let path: ReadonlyArray<PropertyKey> = []
  for (;;) {
    const message = annotatedMessage(issue)
    if (message !== undefined) return { path, message }
    switch (issue._tag) {
      case "Pointer":
        path = path.concat(issue.path)
        issue = issue.issue
        continue
      case "Missing":
        return { path, message: undefined }
      case "Unexpected":
        return { path, message: "this field is not allowed" }
      case "Forbidden":
        return { path, message: "this value could not be checked" }
      case "Type":
        return issue.message !== undefined ? { path, message: issue.message } : expected(path, issue.ast, issue.actual)
      case "Refinement":
        if (issue.kind === "Predicate") return expected(path, issue.ast, issue.actual)
        issue = issue.issue
        continue
      case "Transformation":
        issue = issue.issue
        continue
      case "Composite": {
        const issues = (Array.isArray(issue.issues) ? issue.issues : [issue.issues]) as ReadonlyArray<ParseResult.ParseIssue>
        if (issue.ast._tag === "Union") {
          const deeper = issues.find((i) => !isShallow(i))
          if (deeper === undefined) return expected(path, issue.ast, issue.actual)
          issue = deeper
          continue
        }
        if (issues.length === 0) return expected(path, issue.ast, issue.actual)
        issue = issues[0]!
        continue
      }
    }
  }
}

const toInvalidRequest = (error: ParseResult.ParseError): InvalidRequest => {
  const problem = firstProblem(error.issue)
  const param = formatPath(problem.path)
  if (param === null) {
    return new InvalidRequest({ message: "Invalid request body: expected a JSON object.", param: null })
  }
  if (problem.message === undefined) {
    return new InvalidRequest({ message: `Missing required parameter: '${param}'.`, param })
  }
  return new InvalidRequest({ message: `Invalid value for '${param}': ${sentence(problem.message)}`, param })
}

const parseOptions = { onExcessProperty: "preserve", errors: "first" } as const
const decodeChat = Schema.decodeUnknownEither(ChatCompletionRequest, parseOptions)
const decodeEmbeddings = Schema.decodeUnknownEither(EmbeddingsRequest, parseOptions)

// ---------------------------------------------------------------------------
// The fast check: the common shapes, by hand
//
// Decoding a realistic chat request (2-3 KB, nine messages, three tools) with
// the schemas above costs about 30 µs; most requests are of a few common
// shapes that a hand-written check accepts in a fraction of that, without
// building a new object. The check is conservative: it accepts only what the
// schema accepts (a property test holds it to that), and for anything else
// (a mistake, or a shape it does not know) it says "ask the schema", which
// then decides and words the error. Unknown fields pass untouched, as the
// schema (`onExcessProperty: "preserve"`) lets them.

type Rec = Record<string, unknown>

const isRec = (u: unknown): u is Rec => typeof u === "object" && u !== null && !Array.isArray(u)
const isStr = (u: unknown): boolean => typeof u === "string"
const isBool = (u: unknown): boolean => typeof u === "boolean"
const isNum = (u: unknown): u is number => typeof u === "number"
const isInt = (u: unknown): u is number => Number.isSafeInteger(u)
const isNonEmptyStr = (u: unknown): boolean => typeof u === "string" && u.length > 0
/** Absent (undefined), or null, or `ok`. */
const orNull = (u: unknown, ok: (u: unknown) => boolean): boolean => u === undefined || u === null || ok(u)
const opt = (u: unknown, ok: (u: unknown) => boolean): boolean => u === undefined || ok(u)

const isStrArray = (u: unknown): boolean => {
  if (!Array.isArray(u)) return false
  for (let i = 0; i < u.length; i++) if (typeof u[i] !== "string") return false
  return true
}

/** A string, or an array of content parts (objects with a string `type`). */
const isContent = (u: unknown): boolean => {
  if (typeof u === "string") return true
  if (!Array.isArray(u)) return false
  for (let i = 0; i < u.length; i++) {
    const part = u[i]
    if (!isRec(part) || typeof part["type"] !== "string") return false
  }
  return true
}

const isToolCall = (u: unknown): boolean => {
  if (!isRec(u) || typeof u["id"] !== "string" || u["type"] !== "function") return false
  const f = u["function"]
  return isRec(f) && typeof f["name"] === "string" && typeof f["arguments"] === "string"
}

const isMessage = (m: unknown): boolean => {
  if (!isRec(m)) return false
  switch (m["role"]) {
    case "system":
    case "developer":
    case "user":
      return isContent(m["content"]) && opt(m["name"], isStr)
    case "assistant": {
      const calls = m["tool_calls"]
      if (calls !== undefined) {
        if (!Array.isArray(calls)) return false
        for (let i = 0; i < calls.length; i++) if (!isToolCall(calls[i])) return false
      }
      return orNull(m["content"], isContent) && opt(m["name"], isStr) && orNull(m["refusal"], isStr) &&
        orNull(m["function_call"], isRec) && orNull(m["audio"], isRec)
    }
    case "tool":
      return isContent(m["content"]) && typeof m["tool_call_id"] === "string"
    default:
      return false
  }
}

const isTool = (u: unknown): boolean => {
  if (!isRec(u) || u["type"] !== "function") return false
  const f = u["function"]
  return isRec(f) && typeof f["name"] === "string" && opt(f["description"], isStr) && opt(f["parameters"], isRec) &&
    orNull(f["strict"], isBool)
}

const isResponseFormat = (u: unknown): boolean => {
  if (!isRec(u)) return false
  switch (u["type"]) {
    case "text":
    case "json_object":
      return true
    case "json_schema": {
      const s = u["json_schema"]
      return isRec(s) && typeof s["name"] === "string" && opt(s["description"], isStr) && opt(s["schema"], isRec) &&
        orNull(s["strict"], isBool)
    }
    default:
      return false
  }
}

const isRecordOf = (u: unknown, ok: (v: unknown) => boolean): boolean => {
  if (!isRec(u)) return false
  for (const k in u) if (!ok(u[k])) return false
  return true
}

const between = (min: number, max: number) => (u: unknown): boolean => isNum(u) && u >= min && u <= max
const inUnitPair = between(0, 2)
const inUnit = between(0, 1)
const isPenalty = between(-2, 2)
const isPositiveInt = (u: unknown): boolean => isInt(u) && u >= 1

/**
 * Whether `body` is a chat request the schema accepts, by a hand-written
 * check of the common shapes. False means "not known here": the schema
 * decides.
 */
export const isPlainChatRequest = (body: unknown): body is ChatCompletionRequest => {
  if (!isRec(body) || !isNonEmptyStr(body["model"])) return false
  const messages = body["messages"]
  if (!Array.isArray(messages) || messages.length === 0) return false
  for (let i = 0; i < messages.length; i++) if (!isMessage(messages[i])) return false
  for (const k in body) {
    const v = body[k]
    if (v === undefined) continue
    switch (k) {
      case "model":
      case "messages":
        break
      case "temperature":
        if (!orNull(v, inUnitPair)) return false
        break
      case "top_p":
        if (!orNull(v, inUnit)) return false
        break
      case "n":
      case "max_tokens":
      case "max_completion_tokens":
        if (!orNull(v, isPositiveInt)) return false
        break
      case "stream":
      case "parallel_tool_calls":
      case "store":
      case "logprobs":
        if (!orNull(v, isBool)) return false
        break
      case "stream_options":
        if (v !== null && !(isRec(v) && opt(v["include_usage"], isBool))) return false
        break
      case "stop":
        if (v !== null && typeof v !== "string" && !isStrArray(v)) return false
        break
      case "presence_penalty":
      case "frequency_penalty":
        if (!orNull(v, isPenalty)) return false
        break
      case "logit_bias":
        if (v !== null && !isRecordOf(v, isNum)) return false
        break
      case "user":
        if (typeof v !== "string") return false
        break
      case "seed":
        if (!orNull(v, isInt)) return false
        break
      case "tools":
        if (!Array.isArray(v)) return false
        for (let i = 0; i < v.length; i++) if (!isTool(v[i])) return false
        break
      case "tool_choice":
        if (!(v === "none" || v === "auto" || v === "required" || (isRec(v) && typeof v["type"] === "string"))) return false
        break
      case "response_format":
        if (!isResponseFormat(v)) return false
        break
      case "metadata":
        if (v !== null && !isRecordOf(v, isStr)) return false
        break
      case "top_logprobs":
        if (v !== null && !(isInt(v) && v >= 0 && v <= 20)) return false
        break
      case "reasoning_effort":
      case "service_tier":
        if (v !== null && typeof v !== "string") return false
        break
      case "modalities":
        if (v !== null && !isStrArray(v)) return false
        break
      case "audio":
      case "prediction":
        if (v !== null && !isRec(v)) return false
        break
      default:
        // Not a field the schema knows: preserved unchecked, as the schema does.
        break
    }
  }
  return true
}

const isNumArray = (u: unknown): boolean => {
  if (!Array.isArray(u) || u.length === 0) return false
  for (let i = 0; i < u.length; i++) if (typeof u[i] !== "number") return false
  return true
}

/** Whether `body` is an embeddings request the schema accepts (false: the schema decides). */
export const isPlainEmbeddingsRequest = (body: unknown): body is EmbeddingsRequest => {
  if (!isRec(body) || !isNonEmptyStr(body["model"])) return false
  const input = body["input"]
  if (typeof input !== "string") {
    if (!Array.isArray(input) || input.length === 0) return false
    const first = input[0]
    if (typeof first === "string") {
      if (!isStrArray(input)) return false
    } else if (typeof first === "number") {
      if (!isNumArray(input)) return false
    } else {
      for (let i = 0; i < input.length; i++) if (!isNumArray(input[i])) return false
    }
  }
  const format = body["encoding_format"]
  if (format !== undefined && format !== "float" && format !== "base64") return false
  const dimensions = body["dimensions"]
  if (dimensions !== undefined && !isPositiveInt(dimensions)) return false
  return opt(body["user"], isStr)
}

/**
 * Decodes a chat request body; unknown fields are kept as they came. The
 * common shapes are checked by hand ({@link isPlainChatRequest}) and passed
 * on as they are; the rest, errors included, go through the schema.
 */
export const decodeChatRequest = (body: unknown): Either.Either<ChatCompletionRequest, InvalidRequest> =>
  isPlainChatRequest(body) ? Either.right(body) : Either.mapLeft(decodeChat(body), toInvalidRequest)

/** Decodes an embeddings request body; unknown fields are kept as they came (common shapes checked by hand). */
export const decodeEmbeddingsRequest = (body: unknown): Either.Either<EmbeddingsRequest, InvalidRequest> =>
  isPlainEmbeddingsRequest(body) ? Either.right(body) : Either.mapLeft(decodeEmbeddings(body), toInvalidRequest)

/** The schema alone, without the fast check (for tests and benchmarks that compare the two). */
export const decodeChatRequestBySchema = (body: unknown): Either.Either<ChatCompletionRequest, InvalidRequest> =>
  Either.mapLeft(decodeChat(body), toInvalidRequest)

/** The schema alone, without the fast check. */
export const decodeEmbeddingsRequestBySchema = (body: unknown): Either.Either<EmbeddingsRequest, InvalidRequest> =>
  Either.mapLeft(decodeEmbeddings(body), toInvalidRequest)

/**
 * A cheap pre-flight token estimate for tokens-per-minute limits: about four
 * characters a token for the text sent, plus the most the answer may use.
 */
export const estimateTokens = (request: ChatCompletionRequest): number =>
  estimatePromptTokens(request) + (request.max_completion_tokens ?? request.max_tokens ?? 0)

/** The prompt part of {@link estimateTokens}: about four characters a token of the messages' text. */
export const estimatePromptTokens = (request: ChatCompletionRequest): number => {
  let chars = 0
  for (const message of request.messages) {
    const content = message.content
    if (typeof content === "string") chars += content.length
    else if (Array.isArray(content)) {
      for (const part of content as ReadonlyArray<ContentPart>) {
        if (typeof part["text"] === "string") chars += part["text"].length
      }
    }
  }
  return Math.ceil(chars / 4)
}

/** Tokens for `chars` characters of generated text, at the same four characters a token. */
export const estimateCompletionTokens = (chars: number): number => Math.ceil(chars / 4)

const GENERATED_KEYS = ["\"content\"", "\"arguments\"", "\"reasoning_content\"", "\"reasoning\"", "\"refusal\""] as const

/**
 * Characters of generated text in one stream chunk's JSON (`content`, tool
 * call `arguments`, `reasoning_content`/`reasoning`, `refusal`), found by a
 * scan rather than a parse: it runs on every chunk of every stream, so that a
 * stream whose upstream reports no usage can still be priced. Escapes count
 * as one character.
 */
export const generatedChars = (data: string): number => {
  let n = 0
  for (const key of GENERATED_KEYS) {
    let at = data.indexOf(key)
    while (at >= 0) {
      let i = at + key.length
      while (data.charCodeAt(i) === 32) i++
      if (data.charCodeAt(i) === 58 /* : */) {
        i++
        while (data.charCodeAt(i) === 32) i++
        if (data.charCodeAt(i) === 34 /* " */) {
          const start = ++i
          let escapes = 0
          while (i < data.length) {
            const c = data.charCodeAt(i)
            if (c === 34) break
            if (c === 92 /* backslash */) {
              const next = data.charCodeAt(i + 1)
              const width = next === 117 /* u */ ? 6 : 2
              escapes += width - 1
              i += width
            } else i++
          }
          n += Math.max(0, Math.min(i, data.length) - start - escapes)
        }
      }
      at = data.indexOf(key, i)
    }
  }
  return n
}

/** Whether a stream chunk carries a `usage` object (not `"usage": null`), without parsing it. */
export const hasUsageObject = (data: string): boolean => {
  const at = data.indexOf("\"usage\"")
  if (at < 0) return false
  let i = at + 7
  while (data.charCodeAt(i) === 32) i++
  if (data.charCodeAt(i) !== 58 /* : */) return false
  i++
  while (data.charCodeAt(i) === 32) i++
  return data.charCodeAt(i) === 123 /* { */
}

// ---------------------------------------------------------------------------
// Responses

export interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
  /** Prompt tokens the provider served from its prompt cache (priced at `cachedInput`). */
  readonly prompt_tokens_details?: { readonly cached_tokens: number }
}

/** Why a response body is not a usable answer: counted against the upstream. */
export type ResponseProblem = {
  readonly kind: "not-json" | "truncated" | "no-choices" | "empty-choices" | "empty-message" | "not-object" | "no-data"
  readonly detail: string
}

/** The upstream account is out of money or tokens: try another account, not this one again soon. */
export type QuotaProblem = {
  readonly code: "insufficient_quota" | "tokens_limit_exceeded"
  readonly message: string
}

export type Inspection =
  | { readonly _tag: "Ok"; readonly json: any; readonly usage: Usage | undefined }
  | { readonly _tag: "Invalid"; readonly problem: ResponseProblem }
  | { readonly _tag: "Quota"; readonly problem: QuotaProblem }

export type StreamChunkInspection =
  | { readonly _tag: "Done" }
  | { readonly _tag: "Chunk"; readonly json: any; readonly usage?: Usage }
  | { readonly _tag: "Error"; readonly problem: ResponseProblem }
  | { readonly _tag: "Quota"; readonly problem: QuotaProblem }

const isRecord = (u: unknown): u is Record<string, unknown> =>
  typeof u === "object" && u !== null && !Array.isArray(u)

const isCount = (u: unknown): u is number => typeof u === "number" && Number.isFinite(u) && u >= 0

/**
 * The token counts of a response or stream chunk, if it carries them.
 * Embeddings report no completion tokens; those count as 0.
 */
export const usageOf = (json: unknown): Usage | undefined => {
  if (!isRecord(json)) return undefined
  const usage = json["usage"]
  if (!isRecord(usage) || !isCount(usage["prompt_tokens"])) return undefined
  const prompt_tokens = usage["prompt_tokens"]
  const completion_tokens = isCount(usage["completion_tokens"]) ? usage["completion_tokens"] : 0
  const total_tokens = isCount(usage["total_tokens"]) ? usage["total_tokens"] : prompt_tokens + completion_tokens
  const details = usage["prompt_tokens_details"]
  if (isRecord(details) && isCount(details["cached_tokens"]) && details["cached_tokens"] > 0) {
    const cached_tokens = Math.min(details["cached_tokens"], prompt_tokens)
    return { prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details: { cached_tokens } }
  }
  return { prompt_tokens, completion_tokens, total_tokens }
}

const quotaCodes = ["insufficient_quota", "tokens_limit_exceeded"] as const

/** The quota problem in a parsed `{"error": {...}}` (or `[{"error": ...}]`), if that is what it is. */
const quotaOf = (json: unknown): QuotaProblem | undefined => {
  const body = Array.isArray(json) ? json[0] : json
  if (!isRecord(body) || !isRecord(body["error"])) return undefined
  const error = body["error"]
  const code = quotaCodes.find((c) => error["code"] === c || error["type"] === c)
  if (code === undefined) return undefined
  const message = typeof error["message"] === "string" ? error["message"] : code
  return { code, message }
}

/**
 * The quota problem an error body reports (e.g. a 429 that will not go away
 * by waiting). Most error bodies are not about quota, so a substring check
 * comes before any parsing.
 */
export const quotaInErrorBody = (text: string): QuotaProblem | undefined => {
  if (!text.includes("insufficient_quota") && !text.includes("tokens_limit_exceeded")) return undefined
  try {
    return quotaOf(JSON.parse(text))
  } catch {
    return undefined
  }
}

/**
 * Whether a 404 body says the model is unknown to that upstream: OpenAI's
 * `code: "model_not_found"`, or an error message about a model (as other
 * providers' compatible APIs put it). A 404 about anything else is the
 * caller's.
 */
export const isModelNotFound = (text: string): boolean => {
  if (text.includes("model_not_found")) return true
  if (!/model/i.test(text)) return false
  try {
    const json: unknown = JSON.parse(text)
    const body = Array.isArray(json) ? json[0] : json
    const error = isRecord(body) ? body["error"] : undefined
    return isRecord(error) && typeof error["message"] === "string" && /\bmodels?\b/i.test(error["message"])
  } catch {
    return false
  }
}

/** Whether JSON text ends inside a string or an open object/array: cut off rather than garbled. */
const unbalanced = (text: string): boolean => {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92 /* \ */) i++
      else if (c === 34 /* " */) inString = false
    } else if (c === 34) inString = true
    else if (c === 123 /* { */ || c === 91 /* [ */) depth++
    else if (c === 125 /* } */ || c === 93 /* ] */) depth--
  }
  return inString || depth > 0
}

type Parsed = { readonly _tag: "Parsed"; readonly json: unknown } | { readonly _tag: "Invalid"; readonly problem: ResponseProblem }

const parse = (text: string): Parsed => {
  try {
    return { _tag: "Parsed", json: JSON.parse(text) }
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e)
    const trimmed = text.trimStart()
    const truncated = (trimmed.startsWith("{") || trimmed.startsWith("[")) &&
      (/Unexpected end|Unterminated|end of JSON/.test(reason) || unbalanced(trimmed))
    return truncated
      ? { _tag: "Invalid", problem: { kind: "truncated", detail: `body cut off after ${text.length} characters: ${reason}` } }
      : { _tag: "Invalid", problem: { kind: "not-json", detail: `body is not JSON: ${reason}` } }
  }
}

const describeError = (error: unknown): string => {
  if (isRecord(error) && typeof error["message"] === "string") return error["message"]
  return JSON.stringify(error) ?? "unknown error"
}

/**
 * Checks a complete chat completion body. A short answer ("4") is an answer,
 * and so is whitespace: the relay does not judge content. A message is empty
 * only when its content is null, absent or "" and it has no tool or function
 * call, no refusal and no audio.
 */
export const inspectChatCompletion = (text: string): Inspection => {
  const parsed = parse(text)
  if (parsed._tag === "Invalid") return parsed
  const json = parsed.json
  if (!isRecord(json)) return { _tag: "Invalid", problem: { kind: "not-object", detail: "body is not a JSON object" } }
  const quota = quotaOf(json)
  if (quota !== undefined) return { _tag: "Quota", problem: quota }
  const choices = json["choices"]
  if (!Array.isArray(choices)) {
    const detail = json["error"] !== undefined
      ? `upstream sent an error instead of a completion: ${describeError(json["error"])}`
      : "body has no choices"
    return { _tag: "Invalid", problem: { kind: "no-choices", detail } }
  }
  if (choices.length === 0) return { _tag: "Invalid", problem: { kind: "empty-choices", detail: "choices is empty" } }
  const first: unknown = choices[0]
  const message = isRecord(first) ? first["message"] : undefined
  if (!isRecord(message)) {
    return { _tag: "Invalid", problem: { kind: "empty-message", detail: "the first choice has no message" } }
  }
  if (isEmptyMessage(message)) {
    return { _tag: "Invalid", problem: { kind: "empty-message", detail: "the first choice's message is empty" } }
  }
  return { _tag: "Ok", json, usage: usageOf(json) }
}

const isEmptyMessage = (message: Record<string, unknown>): boolean => {
  const content = message["content"]
  const hasContent = (typeof content === "string" && content !== "") || (Array.isArray(content) && content.length > 0)
  if (hasContent) return false
  const toolCalls = message["tool_calls"]
  if (Array.isArray(toolCalls) && toolCalls.length > 0) return false
  if (isRecord(message["function_call"])) return false
  if (typeof message["refusal"] === "string" && message["refusal"] !== "") return false
  if (isRecord(message["audio"])) return false
  return true
}

/** Checks a complete embeddings body: every item of a non-empty `data` has an embedding. */
export const inspectEmbeddings = (text: string): Inspection => {
  const parsed = parse(text)
  if (parsed._tag === "Invalid") return parsed
  const json = parsed.json
  if (!isRecord(json)) return { _tag: "Invalid", problem: { kind: "not-object", detail: "body is not a JSON object" } }
  const quota = quotaOf(json)
  if (quota !== undefined) return { _tag: "Quota", problem: quota }
  const data = json["data"]
  if (!Array.isArray(data) || data.length === 0) {
    const detail = json["error"] !== undefined
      ? `upstream sent an error instead of embeddings: ${describeError(json["error"])}`
      : Array.isArray(data) ? "data is empty" : "body has no data"
    return { _tag: "Invalid", problem: { kind: "no-data", detail } }
  }
  for (let i = 0; i < data.length; i++) {
    const item: unknown = data[i]
    const embedding = isRecord(item) ? item["embedding"] : undefined
    const ok = (Array.isArray(embedding) || typeof embedding === "string") && embedding.length > 0
    if (!ok) return { _tag: "Invalid", problem: { kind: "no-data", detail: `data[${i}] has no embedding` } }
  }
  return { _tag: "Ok", json, usage: usageOf(json) }
}

/**
 * Checks one SSE `data:` payload of a chat stream. Chunks with empty
 * `choices` are valid (the final usage chunk has none).
 */
export const inspectStreamChunk = (data: string): StreamChunkInspection => {
  const trimmed = data.trim()
  if (trimmed === "[DONE]") return { _tag: "Done" }
  const parsed = parse(trimmed)
  if (parsed._tag === "Invalid") return { _tag: "Error", problem: parsed.problem }
  const json = parsed.json
  if (!isRecord(json)) return { _tag: "Error", problem: { kind: "not-object", detail: "chunk is not a JSON object" } }
  if (json["error"] !== undefined) {
    const quota = quotaOf(json)
    if (quota !== undefined) return { _tag: "Quota", problem: quota }
    return {
      _tag: "Error",
      problem: { kind: "no-choices", detail: `upstream sent an error in the stream: ${describeError(json["error"])}` }
    }
  }
  const usage = usageOf(json)
  return usage === undefined ? { _tag: "Chunk", json } : { _tag: "Chunk", json, usage }
}

/** An OpenAI error body, as text: `{"error":{"message","type","param","code"}}`. */
export const errorBody = (message: string, type: string, param: string | null, code: string | null): string =>
  JSON.stringify({ error: { message, type, param, code } })
