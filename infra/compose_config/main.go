// compose-config loads a Compose file as `docker compose config` does, with compose-go (the loader
// of Docker Compose v2): interpolation from the environment, the Compose Specification's schema,
// references between services, and the profiles named on the command line. It prints the services
// that `docker compose [--profile P ...] up` would start, one per line, or the loader's error and
// exits 1. No Docker engine runs where the tests do; this is how docker-compose.yml is loaded there
// (tests/unit/infra/test_compose_file.py).
//
// Usage: compose-config FILE [PROFILE ...]
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-config FILE [PROFILE ...]")
		os.Exit(2)
	}
	options, err := cli.NewProjectOptions(
		[]string{os.Args[1]}, cli.WithOsEnv, cli.WithProfiles(os.Args[2:]), cli.WithName("engagement"),
	)
	if err == nil {
		var project interface{ ServiceNames() []string }
		project, err = options.LoadProject(context.Background())
		if err == nil {
			names := project.ServiceNames()
			sort.Strings(names)
			for _, name := range names {
				fmt.Println(name)
			}
			return
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
