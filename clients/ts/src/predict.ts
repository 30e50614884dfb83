// Sends one Predict request to a tensorgate server through the generated TypeScript client (Connect's gRPC
// transport over HTTP/2) and prints the answer as JSON: the class (argmax) of every example and its scores.
//
//   node dist/predict.js 127.0.0.1:8500 digit.f32   # raw little-endian float32 values, row-major, [1,28,28]
//   node dist/predict.js 127.0.0.1:8500             # an all-zero image
//
// Optional environment: TENSORGATE_MODEL (mnist), TENSORGATE_INPUT (keras_tensor), TENSORGATE_OUTPUT (output_0).

import { readFileSync } from "node:fs";

import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { InferenceService } from "./gen/tensorgate/v1/inference_service_pb.js";
import { DataType, type Tensor } from "./gen/tensorgate/v1/tensor_pb.js";

const SHAPE = [1, 28, 28];

function readImage(path: string | undefined): Uint8Array {
  const bytes = 4 * SHAPE.reduce((a, b) => a * b, 1);
  if (path === undefined) {
    return new Uint8Array(bytes);
  }
  const raw = new Uint8Array(readFileSync(path === "-" ? 0 : path));
  if (raw.length !== bytes) {
    throw new Error(`${path} holds ${raw.length} bytes; a [${SHAPE}] float32 image has ${bytes}`);
  }
  return raw;
}

/** The rows of a float32 [batch, classes] tensor, raw or typed. */
function rows(tensor: Tensor): number[][] {
  if (tensor.dtype !== DataType.FLOAT32 || tensor.shape.length !== 2) {
    throw new Error(`expected a float32 [batch, classes] output, got ${DataType[tensor.dtype]} [${tensor.shape}]`);
  }
  let values = tensor.floatValues;
  if (tensor.rawContents.length > 0) {
    const view = new DataView(tensor.rawContents.buffer, tensor.rawContents.byteOffset, tensor.rawContents.byteLength);
    values = Array.from({ length: view.byteLength / 4 }, (_, i) => view.getFloat32(4 * i, true));
  }
  const [batch, width] = tensor.shape.map(Number);
  if (values.length !== batch * width) {
    throw new Error("output holds fewer values than its shape says");
  }
  return Array.from({ length: batch }, (_, i) => values.slice(i * width, (i + 1) * width));
}

function argmax(values: number[]): number {
  return values.reduce((best, v, i) => (v > values[best] ? i : best), 0);
}

async function main(argv: string[]): Promise<void> {
  const [target, image] = argv;
  if (target === undefined) {
    throw new Error("usage: predict.js HOST:PORT [IMAGE.f32 | -]");
  }
  const model = process.env.TENSORGATE_MODEL ?? "mnist";
  const input = process.env.TENSORGATE_INPUT ?? "keras_tensor";
  const output = process.env.TENSORGATE_OUTPUT ?? "output_0";
  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const client = createClient(InferenceService, transport);
  const response = await client.predict(
    {
      model,
      inputs: { [input]: { dtype: DataType.FLOAT32, shape: SHAPE.map(BigInt), rawContents: readImage(image) } },
      outputFilter: [output],
    },
    { timeoutMs: 30_000 },
  );
  const tensor = response.outputs[output];
  if (tensor === undefined) {
    throw new Error(`no output "${output}" in the response`);
  }
  const scores = rows(tensor);
  const answer = { model: response.model, version: response.version, classes: scores.map(argmax), scores };
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  process.stderr.write(`predict: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
