// Executes an Ollama TEMPLATE the way Ollama does (template/template.go): Go's text/template
// with missingkey=zero, on Ollama's chat data {System, Messages, Tools, Prompt, Response}.
// Input on stdin: {"template": "...", "system": "...", "messages": [{"role", "content"}], ...}.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string     `json:"template"`
	System   string     `json:"system"`
	Messages []*Message `json:"messages"`
	Prompt   string     `json:"prompt"`
	Response string     `json:"response"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fail(err)
	}
	data := map[string]any{"System": in.System, "Messages": in.Messages, "Tools": nil,
		"Prompt": in.Prompt, "Response": in.Response}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
