/* The sandbox ("pause") container of the test node's Pods: it holds the Pod's namespaces and
 * does nothing else. As PID 1 of the Pod it reaps zombies and exits on SIGINT or SIGTERM,
 * like Kubernetes' build/pause/linux/pause.c. Built with `gcc -static` by images.sh. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(0); }

static void reap(int sig) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
}
