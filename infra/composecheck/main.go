// composecheck loads a compose file with compose-go, the loader behind `docker compose config`,
// so the project's docker-compose.yml is validated on machines without a Docker engine or the
// compose plugin. It prints the resolved project (like `docker compose config`) or the error.
//
//	go run ./infra/composecheck docker-compose.yml [--profile gpu ...]
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE [--profile NAME ...]")
		os.Exit(2)
	}
	var profiles []string
	for i := 2; i+1 < len(os.Args); i += 2 {
		if os.Args[i] == "--profile" {
			profiles = append(profiles, os.Args[i+1])
		}
	}
	opts, err := cli.NewProjectOptions(
		[]string{os.Args[1]},
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithName("undertow"),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
