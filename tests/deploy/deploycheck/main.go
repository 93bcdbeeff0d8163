// deploycheck runs the reference parsers of the deploy/ files' own ecosystems, offline:
//
//	deploycheck compose FILE   loads a Compose file with compose-go (the library Docker Compose
//	                           itself uses) and prints the resolved project as JSON
//	deploycheck kustomize DIR  builds a kustomization with kustomize's own API (what
//	                           `kubectl apply -k` runs) and prints the rendered manifests as YAML
//
// It exits 1 with the library's own message when the input is not valid.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: deploycheck compose FILE | deploycheck kustomize DIR")
		os.Exit(2)
	}
	var out []byte
	var err error
	switch os.Args[1] {
	case "compose":
		out, err = compose(os.Args[2])
	case "kustomize":
		out, err = kustomize(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[2], err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

func compose(path string) ([]byte, error) {
	file, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	options, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithDotEnv,
		cli.WithName("cascade"),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return nil, err
	}
	return project.MarshalJSON()
}

func kustomize(dir string) ([]byte, error) {
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	return resources.AsYaml()
}
