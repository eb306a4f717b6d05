// Stand-in for `vscode-languageclient/node`: records what the extension asks of the client
// and answers requests from per-test handlers instead of spawning a server.
import { EventEmitter } from "./vscode";

export enum State {
  Stopped = 1,
  Starting = 3,
  Running = 2,
}

export type Handler = (params: unknown, token?: unknown) => unknown;

export class LanguageClient {
  static instances: LanguageClient[] = [];
  /** Requests answered by every new client; set by the tests. */
  static handlers = new Map<string, Handler>();
  static failStart: Error | undefined;
  /** When set, start() stays in Starting until this promise resolves. */
  static startGate: Promise<void> | undefined;

  state: State = State.Stopped;
  requests: Array<{ method: string; params: unknown; token: unknown }> = [];
  notifications: Array<{ method: string; params: unknown }> = [];
  stopped = false;
  private stateEmitter = new EventEmitter<{ oldState: State; newState: State }>();
  onDidChangeState = this.stateEmitter.event;

  constructor(
    public id: string,
    public name: string,
    public serverOptions: any,
    public clientOptions: any,
  ) {
    LanguageClient.instances.push(this);
  }

  private setState(s: State): void {
    const old = this.state;
    this.state = s;
    this.stateEmitter.fire({ oldState: old, newState: s });
  }

  async start(): Promise<void> {
    this.setState(State.Starting);
    if (LanguageClient.startGate) await LanguageClient.startGate;
    if (LanguageClient.failStart) {
      this.setState(State.Stopped);
      throw LanguageClient.failStart;
    }
    this.setState(State.Running);
  }

  async stop(_timeout?: number): Promise<void> {
    this.stopped = true;
    this.setState(State.Stopped);
  }

  async sendRequest(method: string, params?: unknown, token?: unknown): Promise<unknown> {
    this.requests.push({ method, params, token });
    const h = LanguageClient.handlers.get(method);
    if (!h) throw new Error(`Unhandled method ${method}`);
    return h(params, token);
  }

  async sendNotification(method: string, params?: unknown): Promise<void> {
    this.notifications.push({ method, params });
  }
}
