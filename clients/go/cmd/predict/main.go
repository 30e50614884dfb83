// Command predict sends one Predict request to a tensorgate server through the generated Go client and
// prints the model's answer as JSON: the class (argmax) of every example and its scores.
//
//	predict -target 127.0.0.1:8500 -image digit.f32   # raw little-endian float32 values, row-major
//	predict -target 127.0.0.1:8500                    # an all-zero [1,28,28] image
//
// The input travels as raw_contents (the fast path), so the outputs come back raw too.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	tensorgatev1 "tensorgate/clients/go/tensorgatev1"
)

type answer struct {
	Model   string      `json:"model"`
	Version string      `json:"version"`
	Classes []int       `json:"classes"`
	Scores  [][]float32 `json:"scores"`
}

func main() {
	target := flag.String("target", "127.0.0.1:8500", "gRPC address of the server (plaintext)")
	model := flag.String("model", "mnist", "model name")
	version := flag.String("version", "", "model version; empty for the newest available")
	input := flag.String("input", "keras_tensor", "name of the float32 input of the signature")
	output := flag.String("output", "output_0", "name of the float32 output whose argmax is printed")
	shape := flag.String("shape", "1,28,28", "shape of the input, batch first")
	image := flag.String("image", "", "file of raw little-endian float32 values ('-': stdin; empty: zeros)")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of the call")
	flag.Parse()
	if err := run(*target, *model, *version, *input, *output, *shape, *image, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "predict:", err)
		os.Exit(1)
	}
}

func run(target, model, version, input, output, shapeText, image string, timeout time.Duration) error {
	shape, elements, err := parseShape(shapeText)
	if err != nil {
		return err
	}
	raw, err := readImage(image, elements)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", target, err)
	}
	defer conn.Close()
	response, err := tensorgatev1.NewInferenceServiceClient(conn).Predict(ctx, &tensorgatev1.PredictRequest{
		Model:   model,
		Version: version,
		Inputs: map[string]*tensorgatev1.Tensor{
			input: {Dtype: tensorgatev1.DataType_DATA_TYPE_FLOAT32, Shape: shape, RawContents: raw},
		},
		OutputFilter: []string{output},
	})
	if err != nil {
		return err
	}
	tensor, ok := response.GetOutputs()[output]
	if !ok {
		return fmt.Errorf("no output %q in the response", output)
	}
	scores, err := rows(tensor)
	if err != nil {
		return err
	}
	result := answer{Model: response.GetModel(), Version: response.GetVersion(), Scores: scores}
	for _, row := range scores {
		result.Classes = append(result.Classes, argmax(row))
	}
	return json.NewEncoder(os.Stdout).Encode(result)
}

func parseShape(text string) ([]int64, int, error) {
	var shape []int64
	elements := 1
	for _, part := range strings.Split(text, ",") {
		dim, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil || dim < 1 {
			return nil, 0, fmt.Errorf("bad shape %q: positive integers separated by commas", text)
		}
		shape = append(shape, dim)
		elements *= int(dim)
	}
	return shape, elements, nil
}

// readImage returns the raw bytes of the input: elements float32 values, little-endian.
func readImage(path string, elements int) ([]byte, error) {
	if path == "" {
		return make([]byte, 4*elements), nil
	}
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	if len(raw) != 4*elements {
		return nil, fmt.Errorf("%s holds %d bytes; the shape needs %d float32 values (%d bytes)",
			path, len(raw), elements, 4*elements)
	}
	return raw, nil
}

// rows splits a float32 output of shape [batch, classes] into one slice per example.
func rows(tensor *tensorgatev1.Tensor) ([][]float32, error) {
	if tensor.GetDtype() != tensorgatev1.DataType_DATA_TYPE_FLOAT32 || len(tensor.GetShape()) != 2 {
		return nil, fmt.Errorf("expected a float32 [batch, classes] output, got %s %v", tensor.GetDtype(), tensor.GetShape())
	}
	values := tensor.GetFloatValues()
	if raw := tensor.GetRawContents(); len(raw) > 0 {
		values = make([]float32, len(raw)/4)
		for i := range values {
			values[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	}
	batch, width := int(tensor.GetShape()[0]), int(tensor.GetShape()[1])
	if len(values) != batch*width {
		return nil, errors.New("output holds fewer values than its shape says")
	}
	result := make([][]float32, batch)
	for i := range result {
		result[i] = values[i*width : (i+1)*width]
	}
	return result, nil
}

func argmax(values []float32) int {
	best := 0
	for i, v := range values {
		if v > values[best] {
			best = i
		}
	}
	return best
}
