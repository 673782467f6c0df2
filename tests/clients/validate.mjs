// Validates a JSON document against a JSON Schema (draft 2020-12) with ajv.
// usage: node validate.mjs SCHEMA.json DOCUMENT.json — prints the errors and exits 1 when invalid.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const [schemaPath, documentPath] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true, strict: false });
const validate = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));
const ok = validate(JSON.parse(readFileSync(documentPath, "utf8")));
console.log(JSON.stringify({ ok, errors: validate.errors ?? [] }));
process.exit(ok ? 0 : 1);
