/**
 * The Dockerfile, compose.yaml and deploy/kubernetes/ against the server
 * they deploy. CI has no container engine or cluster, so this checks what
 * can be checked without one:
 *
 * - each config they mount passes `Config.parse` with exactly the
 *   environment they provide (a variable the config needs and the manifest
 *   does not set fails it, by name);
 * - ports, probe paths, the config path, the user and the shutdown timings
 *   agree between the Dockerfile, compose, the Deployment and the config;
 * - the probe paths answer 200 on a running server;
 * - the image's runtime stage, laid out as the Dockerfile copies it (no
 *   node_modules), checks the config and serves, and its HEALTHCHECK command
 *   passes against it.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { afterAll, describe, expect, it } from "vitest"
import { parse as parseYaml, parseAllDocuments } from "yaml"
import * as Config from "../src/Config.js"
import { FakeUpstream } from "@breakwater/core/testing"
import { freePort, testBed } from "./helpers/e2e.js"

const ROOT = fileURLToPath(new URL("../../../", import.meta.url))
const read = (path: string) => readFileSync(join(ROOT, path), "utf8")

// Parsed YAML, read by the tests' expectations.
type Json = Record<string, any>

// ---------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  readonly op: string
  readonly args: string
}

/** Instructions of a Dockerfile: comments dropped, continuation lines joined, ARG defaults substituted. */
const dockerfile = (text: string): ReadonlyArray<Instruction> => {
  const lines = text.split("\n").filter((l) => !/^\s*#/.test(l))
  const joined: Array<string> = []
  let current = ""
  for (const line of lines) {
    if (line.trimEnd().endsWith("\\")) current += line.trimEnd().slice(0, -1) + " "
    else {
      current += line
      if (current.trim() !== "") joined.push(current.trim())
      current = ""
    }
  }
  const args = new Map<string, string>()
  return joined.map((l) => {
    const m = /^(\S+)\s+(.*)$/.exec(l)!
    const op = m[1]!.toUpperCase()
    const rest = m[2]!.replace(/\$\{(\w+)\}/g, (all, name: string) => args.get(name) ?? all)
    if (op === "ARG") {
      const [name, value] = rest.split("=")
      if (value !== undefined) args.set(name!, value)
    }
    return { op, args: rest }
  })
}

const docker = dockerfile(read("Dockerfile"))
const all = (op: string) => docker.filter((i) => i.op === op)
/** The last stage: what the image is. */
const runtime = docker.slice(docker.map((i) => i.op).lastIndexOf("FROM"))
const inRuntime = (op: string) => runtime.filter((i) => i.op === op)
const execForm = (i: Instruction | undefined) => JSON.parse(i!.args) as Array<string>

const imageEnv = new Map(
  inRuntime("ENV").flatMap((i) => [...i.args.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!] as const))
)
const exposed = Number(inRuntime("EXPOSE")[0]?.args)
const cmd = execForm(inRuntime("CMD")[0])
const cmdPort = Number(cmd[cmd.indexOf("--port") + 1])
const healthcheck = inRuntime("HEALTHCHECK")[0]?.args ?? ""
const healthcheckCommand = JSON.parse(healthcheck.slice(healthcheck.indexOf("CMD ") + 4)) as Array<string>
const healthcheckUrl = /https?:\/\/[^'"]+/.exec(healthcheck)?.[0] ?? ""

// ---------------------------------------------------------------------------
// configs and manifests

/** `${NAME}` references without a default, in every string of a parsed YAML value. */
const requiredVars = (value: unknown, out = new Set<string>()): Set<string> => {
  if (typeof value === "string") {
    for (const m of value.matchAll(/(?<!\$)\$\{([A-Za-z_]\w*)\}/g)) out.add(m[1]!)
  } else if (typeof value === "object" && value !== null) {
    for (const v of Object.values(value)) requiredVars(v, out)
  }
  return out
}

const parseConfig = (text: string, env: Record<string, string>) => Config.parse(text, { file: "breakwater.yaml", env })
const configOrThrow = (text: string, env: Record<string, string>) => {
  const parsed = parseConfig(text, env)
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  return parsed.right
}

/** Whether the process has at most `shutdownTimeout` + 1 s (its exit margin) within `seconds`. */
const graceCovers = (seconds: number, config: Config.ServerConfig, before = 0) =>
  seconds >= before + Duration.toSeconds(config.server.shutdownTimeout) + 1

const compose = parseYaml(read("compose.yaml"), { merge: true }) as Json
const gateways = Object.entries(compose["services"] as Record<string, Json>).filter(([, s]) => s["build"] !== undefined)
const composeRedis = Object.entries(compose["services"] as Record<string, Json>).find(([, s]) =>
  String(s["image"] ?? "").startsWith("redis:")
)

const k8s: Array<Json> = []
for (const file of ["configmap.yaml", "deployment.yaml", "service.yaml", "secret.example.yaml", "poddisruptionbudget.yaml"]) {
  for (const doc of parseAllDocuments(read(`deploy/kubernetes/${file}`))) k8s.push(doc.toJS() as Json)
}
const kind = (k: string) => k8s.find((d) => d["kind"] === k)!
const deployment = kind("Deployment")
const pod = deployment["spec"]["template"]
const container = pod["spec"]["containers"][0] as Json
const configMap = kind("ConfigMap")
const secret = kind("Secret")
const service = kind("Service")
const namedPort = (port: string | number) =>
  typeof port === "number" ? port : (container["ports"] as Array<Json>).find((p) => p["name"] === port)?.["containerPort"]

/** The pod's environment: plain values as they are, secret references from the example Secret (undefined when it lacks the key). */
const podEnv = (): Record<string, string> =>
  Object.fromEntries(
    (container["env"] as Array<Json>).map((e) => [e["name"], e["value"] ?? secret["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]])
  )
const mountedConfig = (): string => {
  const path: string = podEnv()["BREAKWATER_CONFIG"]!
  const mount = (container["volumeMounts"] as Array<Json>).find((m) => path.startsWith(`${m["mountPath"]}/`))!
  const volume = (pod["spec"]["volumes"] as Array<Json>).find((v) => v["name"] === mount["name"])!
  expect(volume["configMap"]["name"]).toBe(configMap["metadata"]["name"])
  return configMap["data"][path.slice(mount["mountPath"].length + 1)]
}

// ---------------------------------------------------------------------------

describe("Dockerfile", () => {
  it("is multi-stage on Node 20 slim, runs the bundle as a non-root user, stops on SIGTERM", () => {
    const froms = all("FROM").map((i) => i.args)
    expect(froms.length).toBeGreaterThanOrEqual(2)
    for (const f of froms) expect(f).toMatch(/^node:20[-.\w]*-slim\b/)
    const user = inRuntime("USER")[0]?.args.split(":")[0]
    expect(user).toBeDefined()
    expect(["root", "0"]).not.toContain(user)
    expect(inRuntime("STOPSIGNAL")[0]?.args).toBe("SIGTERM")
    expect(execForm(inRuntime("ENTRYPOINT")[0])).toEqual(["node", "/app/bin/breakwater.js"])
    const copied = inRuntime("COPY").map((i) => i.args)
    expect(copied).toContain("--from=build /src/packages/server/bin/ ./bin/")
    expect(copied).toContain("--from=build /src/packages/server/dist/bin/ ./dist/bin/")
  })

  it("listens where it says: EXPOSE, CMD --port and the HEALTHCHECK on /healthz agree", () => {
    expect(exposed).toBe(8080)
    expect(cmdPort).toBe(exposed)
    expect(cmd).toEqual(["--host", "0.0.0.0", "--port", String(exposed)])
    expect(healthcheckUrl).toBe(`http://127.0.0.1:${exposed}/healthz`)
    expect(imageEnv.get("BREAKWATER_CONFIG")).toBe("/etc/breakwater/breakwater.yaml")
  })
})

describe("compose.yaml", () => {
  it("has two gateway replicas and one Redis", () => {
    expect(gateways.map(([name]) => name)).toEqual(["gateway-1", "gateway-2"])
    expect(composeRedis).toBeDefined()
  })

  /** A replica's environment: compose's `${VAR:?...}` (from the operator's shell) as a stand-in value. */
  const envOf = (service: Json): Record<string, string> =>
    Object.fromEntries(
      Object.entries(service["environment"] as Record<string, string>).map(([k, v]) => [k, v.startsWith("${") ? `set-${k}` : v])
    )
  /** The config file a replica mounts at BREAKWATER_CONFIG. */
  const mountedFile = (service: Json): string => {
    const volume = (service["volumes"] as Array<string>).find((v) => v.split(":")[1] === envOf(service)["BREAKWATER_CONFIG"])
    expect(volume, "a volume mounts the config at BREAKWATER_CONFIG").toBeDefined()
    return read(volume!.split(":")[0]!.replace(/^\.\//, ""))
  }

  for (const [name, service] of gateways) {
    it(`${name}: its mounted config passes Config.parse with its environment; Redis store on the Redis service`, () => {
      const env = envOf(service)
      expect(env["BREAKWATER_CONFIG"]).toBe(imageEnv.get("BREAKWATER_CONFIG"))
      const text = mountedFile(service)
      const config = configOrThrow(text, env)
      expect([...requiredVars(parseYaml(text))].filter((v) => !(v in env))).toEqual([])
      expect(config.store.kind).toBe("redis")
      const redisUrl = new URL(env["REDIS_URL"]!)
      expect(redisUrl.hostname).toBe(composeRedis![0])
      expect(service["depends_on"][composeRedis![0]]).toBeDefined()
      expect(config.keys.length).toBeGreaterThan(0) // it listens on 0.0.0.0 only with keys
    })

    it(`${name}: publishes the image's port, and waits out the drain before killing it`, () => {
      for (const p of service["ports"] as Array<string>) expect(Number(p.split(":").at(-1))).toBe(exposed)
      const config = configOrThrow(mountedFile(service), envOf(service))
      const grace = Duration.toSeconds(Option.getOrThrow(Config.parseDuration(String(service["stop_grace_period"]))))
      expect(graceCovers(grace, config)).toBe(true)
    })
  }

  it("the replicas publish different host ports", () => {
    const hostPorts = gateways.flatMap(([, s]) => (s["ports"] as Array<string>).map((p) => p.split(":").slice(0, -1).join(":")))
    expect(new Set(hostPorts).size).toBe(hostPorts.length)
  })
})

describe("deploy/kubernetes", () => {
  it("the ConfigMap's config passes Config.parse with the Deployment's environment, which comes from the Secret", () => {
    const env = podEnv()
    const text = mountedConfig()
    const config = configOrThrow(text, env)
    expect(config.keys.length).toBeGreaterThan(0)
    // Every reference the config needs is set by the Deployment...
    const needed = requiredVars(parseYaml(text))
    expect([...needed].filter((v) => !(v in env))).toEqual([])
    // ...and the check would notice one that is not.
    const [first] = [...needed]
    const { [first!]: _, ...short } = env
    const missing = parseConfig(text, short)
    expect(Either.isLeft(missing) && missing.left.message).toContain(`\${${first}}`)
    // Secret references point at keys of the example Secret.
    for (const e of container["env"] as Array<Json>) {
      const ref = e["valueFrom"]?.["secretKeyRef"]
      if (ref === undefined) continue
      expect(ref["name"]).toBe(secret["metadata"]["name"])
      expect(Object.keys(secret["stringData"])).toContain(ref["key"])
    }
    // Secrets are not in the ConfigMap itself: every secret field is a reference.
    const parsed = parseYaml(text) as Json
    expect(parsed["server"]["adminKey"]).toMatch(/^\$\{\w+\}$/)
    for (const k of parsed["keys"]) expect(k["key"]).toMatch(/^\$\{\w+\}$/)
    for (const u of parsed["upstreams"]) expect(u["apiKey"]).toMatch(/^\$\{\w+\}$/)
  })

  it("ports agree: container port = the image's, probes and Service target it", () => {
    expect(container["args"]).toEqual(cmd)
    expect(namedPort("http")).toBe(exposed)
    expect(namedPort(container["readinessProbe"]["httpGet"]["port"])).toBe(exposed)
    expect(namedPort(container["livenessProbe"]["httpGet"]["port"])).toBe(exposed)
    const svcPort = (service["spec"]["ports"] as Array<Json>)[0]!
    expect(namedPort(svcPort["targetPort"])).toBe(exposed)
    expect(service["spec"]["selector"]).toEqual(deployment["spec"]["selector"]["matchLabels"])
    expect(pod["metadata"]["labels"]).toMatchObject(deployment["spec"]["selector"]["matchLabels"])
    expect(kind("PodDisruptionBudget")["spec"]["selector"]).toEqual(deployment["spec"]["selector"])
  })

  it("probes: readiness on /readyz, liveness on /healthz", () => {
    expect(container["readinessProbe"]["httpGet"]["path"]).toBe("/readyz")
    expect(container["livenessProbe"]["httpGet"]["path"]).toBe("/healthz")
  })

  it("termination: the grace period covers the preStop sleep, the drain and the exit margin", () => {
    const config = configOrThrow(mountedConfig(), podEnv())
    const sleep = container["lifecycle"]["preStop"]["exec"]["command"] as Array<string>
    expect(sleep[0]).toBe("sleep")
    const preStop = Number(sleep[1])
    expect(preStop).toBeGreaterThan(0)
    expect(Duration.lessThanOrEqualTo(config.server.drainGrace, config.server.shutdownTimeout)).toBe(true)
    expect(graceCovers(pod["spec"]["terminationGracePeriodSeconds"], config, preStop)).toBe(true)
  })

  it("runs as the image's non-root user; kustomization applies everything but the example Secret", () => {
    const user = Number(inRuntime("USER")[0]!.args.split(":")[0])
    expect(pod["spec"]["securityContext"]["runAsNonRoot"]).toBe(true)
    expect(pod["spec"]["securityContext"]["runAsUser"]).toBe(user)
    const resources = (parseYaml(read("deploy/kubernetes/kustomization.yaml")) as Json)["resources"] as Array<string>
    for (const r of resources) expect(existsSync(join(ROOT, "deploy/kubernetes", r)), r).toBe(true)
    expect(resources).not.toContain("secret.example.yaml")
  })
})

describe("the probe paths on a running server", () => {
  const bed = testBed()
  it("/readyz, /healthz (the Deployment's and the HEALTHCHECK's) answer 200", async () => {
    const fake = await bed.fake("probe")
    const server = await bed.serve(`upstreams:\n  - { name: probe, baseUrl: "${fake.url}", apiKey: sk-probe }\n`)
    const paths = new Set([
      container["readinessProbe"]["httpGet"]["path"] as string,
      container["livenessProbe"]["httpGet"]["path"] as string,
      new URL(healthcheckUrl).pathname
    ])
    expect(paths.size).toBe(2)
    for (const path of paths) expect((await fetch(`${server.url}${path}`)).status, path).toBe(200)
  })
})

describe("the image's runtime stage, as the Dockerfile lays it out", () => {
  const dir = mkdtempSync(join(tmpdir(), "breakwater-image-"))
  let child: ChildProcess | undefined
  afterAll(() => {
    child?.kill("SIGKILL")
    rmSync(dir, { recursive: true, force: true })
  })

  it("checks the ConfigMap's config and serves without node_modules; the HEALTHCHECK command passes", { timeout: 30_000 }, async () => {
    // COPY package.json, bin/, dist/bin/: nothing else.
    cpSync(join(ROOT, "packages/server/package.json"), join(dir, "package.json"))
    cpSync(join(ROOT, "packages/server/bin"), join(dir, "bin"), { recursive: true })
    cpSync(join(ROOT, "packages/server/dist/bin"), join(dir, "dist/bin"), { recursive: true })
    const configFile = join(dir, "breakwater.yaml")
    writeFileSync(configFile, mountedConfig())
    const env = { PATH: process.env["PATH"] ?? "", ...podEnv(), BREAKWATER_CONFIG: configFile }
    const checked = await new Promise<{ code: number | null; out: string }>((resolve) =>
      execFile(process.execPath, ["bin/breakwater.js", "check-config", configFile], { cwd: dir, env, timeout: 20_000 }, (e, out, err) =>
        resolve({ code: e === null ? 0 : (e.code as number | null), out: out + err }))
    )
    expect(checked.out).toContain("OK (2 upstream(s), 1 key(s))")
    expect(checked.code).toBe(0)

    // Serve (on 127.0.0.1 here, with a reachable upstream and memory stores): the HEALTHCHECK's command passes.
    const fake = await FakeUpstream.start({ name: "image" })
    try {
      const port = await freePort()
      writeFileSync(
        configFile,
        `upstreams:\n  - { name: image, baseUrl: "${fake.url}", apiKey: "\${OPENAI_API_KEY}" }\nkeys:\n  - { name: app, key: "\${APP_GATEWAY_KEY}" }\n`
      )
      child = spawn(process.execPath, ["bin/breakwater.js", "--host", "127.0.0.1", "--port", String(port)], {
        cwd: dir,
        env,
        stdio: ["ignore", "pipe", "pipe"]
      })
      let out = ""
      child.stdout!.setEncoding("utf8").on("data", (c: string) => (out += c))
      child.stderr!.setEncoding("utf8").on("data", (c: string) => (out += c))
      const until = performance.now() + 20_000
      while (!out.includes("Breakwater on")) {
        if (child.exitCode !== null || performance.now() > until) throw new Error(`no start:\n${out}`)
        await new Promise((r) => setTimeout(r, 50))
      }
      const [node, ...args] = healthcheckCommand
      expect(node).toBe("node")
      const healthcheckOn = (p: number) =>
        new Promise<number | null>((resolve) =>
          execFile(
            process.execPath,
            args.map((a) => a.replace(`127.0.0.1:${exposed}`, `127.0.0.1:${p}`)),
            { timeout: 10_000 },
            (e) => resolve(e === null ? 0 : (e.code as number | null))
          )
        )
      expect(await healthcheckOn(port)).toBe(0)
      // ...and fails where nothing listens.
      expect(await healthcheckOn(await freePort())).toBe(1)
    } finally {
      await fake.close()
    }
  })
})
