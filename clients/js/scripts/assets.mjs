// The dashboard as the gateway serves it: the compiled page (build/) and its
// HTML and CSS, copied into crates/gateway/assets so that cargo builds never
// need npm. `write` copies; `check` fails when the committed copy differs from
// a fresh build, so the two cannot drift.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const target = join(here, "..", "..", "crates", "gateway", "assets");
const BANNER = "// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.\n";

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? files(join(dir, d.name)) : [join(dir, d.name)]));
}

/** Served path → content. */
function wanted() {
  const out = new Map();
  out.set("index.html", readFileSync(join(here, "dashboard", "index.html"), "utf8"));
  for (const file of ["style.css", "favicon.svg"]) out.set(`dashboard/${file}`, readFileSync(join(here, "dashboard", file), "utf8"));
  const build = join(here, "build");
  for (const file of files(build)) {
    if (!file.endsWith(".js")) continue;
    out.set(relative(build, file).split("\\").join("/"), BANNER + readFileSync(file, "utf8"));
  }
  return out;
}

const mode = process.argv[2];
const want = wanted();
const have = existsSync(target) ? new Map(files(target).map((f) => [relative(target, f).split("\\").join("/"), readFileSync(f, "utf8")])) : new Map();
if (mode === "write") {
  rmSync(target, { recursive: true, force: true });
  for (const [path, content] of want) {
    mkdirSync(dirname(join(target, path)), { recursive: true });
    writeFileSync(join(target, path), content);
  }
  console.log(`assets: wrote ${want.size} files to ${relative(process.cwd(), target)}`);
} else if (mode === "check") {
  const problems = [];
  for (const [path, content] of want) {
    if (!have.has(path)) problems.push(`missing ${path}`);
    else if (have.get(path) !== content) problems.push(`stale ${path}`);
  }
  for (const path of have.keys()) if (!want.has(path)) problems.push(`extra ${path}`);
  if (problems.length) {
    console.error(`assets: crates/gateway/assets differs from a fresh build (${problems.join(", ")}); run \`npm run build\` in clients/js and commit the result`);
    process.exit(1);
  }
  console.log(`assets: crates/gateway/assets matches a fresh build (${want.size} files)`);
} else {
  console.error("usage: node scripts/assets.mjs write|check");
  process.exit(2);
}
